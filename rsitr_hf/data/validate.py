"""List every problem of a seed-layout dataset at once (``rsitr-validate DATA_DIR``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..cli import command_parser, parse_arguments
from .loading import scan_images
from .seed_layout import SPLITS, Problem, infer_name, read_split_listing


def validate_rsitr(
    data_dir: str | os.PathLike, name: str | None = None, decode_images: bool = True
) -> list[Problem]:
    """All problems of the dataset at ``data_dir``: malformed text files, empty captions, missing
    images and (with ``decode_images``) images whose pixels cannot be fully decoded."""
    data_dir = Path(data_dir)
    name = name or infer_name(data_dir)
    images_dir = data_dir / f"{name}_images"
    if not images_dir.is_dir():
        return [Problem(str(images_dir), "image folder not found")]
    problems: list[Problem] = []
    for split in SPLITS:
        listing, split_problems = read_split_listing(data_dir, split)
        problems.extend(split_problems)
        _, image_problems = scan_images(
            images_dir,
            listing.filenames,
            listing.filenames_path,
            listing.filename_lines,
            decode=decode_images,
        )
        problems.extend(image_problems)
    return problems


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
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
