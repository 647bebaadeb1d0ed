"""Tag a seed-layout dataset's captions with stanza and save the DatasetDict (``rsitr-pos-tag``): the POS
columns POSAPL trains on (see :mod:`rsitr_hf.data.pos`). Training a POSAPL recipe does this itself, once per
dataset; this command is for inspecting the tags or tagging on another machine."""

from __future__ import annotations

import sys

from transformers import CLIPTokenizer

from ..data.loading import load_rsitr
from ..data.pos import NORMALISATIONS, StanzaTagger, add_pos_columns
from ..utils.cli import command, command_parser, parse_arguments


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("data_dir", help="<root>/<name>_precomp")
    parser.add_argument("out_dir", help="where to save_to_disk the tagged DatasetDict")
    parser.add_argument(
        "--tokenizer", required=True, help="base model id or folder whose CLIP tokenizer is used"
    )
    parser.add_argument(
        "--pos_model", default=None, help="tagger .pt (default: $RSITR_POS_MODEL or stanza's)"
    )
    parser.add_argument(
        "--stanza_dir", default=None, help="stanza resources dir (default: $RSITR_STANZA_DIR)"
    )
    parser.add_argument(
        "--validation_fraction", type=float, default=0.2, help="validation carve out of train (as the recipe)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation carve")
    parser.add_argument(
        "--empty_captions",
        default="error",
        choices=("error", "drop", "keep"),
        help="what to do with images whose caption is empty",
    )
    parser.add_argument(
        "--normalisation",
        default="paper",
        choices=NORMALISATIONS,
        help="caption normalisation: paper (the release's) or words (rsitr_hf 0.1's)",
    )
    args = parse_arguments(parser, argv)
    dataset = load_rsitr(
        args.data_dir,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        empty_captions=args.empty_captions,
    )
    tagger = StanzaTagger(args.pos_model, args.stanza_dir)
    tagged = add_pos_columns(
        dataset, tagger, CLIPTokenizer.from_pretrained(args.tokenizer), normalisation=args.normalisation
    )
    tagged.save_to_disk(args.out_dir)
    print(f"saved {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
