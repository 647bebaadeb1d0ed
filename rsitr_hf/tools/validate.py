"""List every problem of a seed-layout dataset at once (``rsitr-validate DATA_DIR``), and, for RSICD, RSITMD
and UCM-Captions, say whether its split files are the published ones (packaged with rsitr_hf) or how they
differ."""

from __future__ import annotations

import sys
from pathlib import Path

from ..data.reference import STANDARD_DATASETS
from ..data.seed_layout import infer_name
from ..data.validate import describe_standard_split, validate_rsitr
from ..utils.cli import command, command_parser, parse_arguments


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("data_dir", help="<root>/<name>_precomp")
    parser.add_argument("--name", default=None, help="dataset name (default: inferred from the folder)")
    parser.add_argument(
        "--headers_only", action="store_true", help="open image headers, do not decode pixels"
    )
    args = parse_arguments(parser, argv)
    problems = validate_rsitr(args.data_dir, args.name, decode_images=not args.headers_only)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) found in {args.data_dir}", file=sys.stderr)
    name = args.name or infer_name(Path(args.data_dir))
    if name in STANDARD_DATASETS:
        print(describe_standard_split(args.data_dir, name))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
