"""Train a small stanza UPOS tagger offline (``rsitr-train-tagger``), for air-gapped machines and tests: UD
English-EWT prepared to look like normalised captions, stanza's own trainer (see
:mod:`rsitr_hf.data.pos_tagger`). Point ``RSITR_POS_MODEL`` (or ``--text.pos_model``) at the ``tagger.pt``
it prints."""

from __future__ import annotations

from ..data.pos_tagger import train_small_tagger
from ..utils.cli import command, command_parser, parse_arguments


@command
def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("train_conllu", help="UD training treebank (.conllu)")
    parser.add_argument("dev_conllu", help="UD development treebank (.conllu)")
    parser.add_argument("out_dir", help="where tagger.pt is written")
    parser.add_argument("--max_steps", type=int, default=600, help="stanza training steps")
    args = parse_arguments(parser, argv)
    print(train_small_tagger(args.train_conllu, args.dev_conllu, args.out_dir, args.max_steps))


if __name__ == "__main__":
    main()
