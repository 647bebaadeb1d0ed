"""The on-disk layout of the original RSITR releases ("seed layout").

::

    <root>/<name>_precomp/
        <name>_images/          image files
        train_caps.txt          one caption per line, 5 consecutive lines per image
        train_filename.txt      one file name per image, or one per caption (repeated 5 times)
        test_caps.txt
        test_filename.txt

This module reads the text files of one split into :class:`SplitListing` and reports every problem
it finds as a :class:`Problem` naming the file and line, so that callers can either raise on them
(:func:`rsitr_hf.data.load_rsitr`) or list them all at once (:func:`rsitr_hf.data.validate_rsitr`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CAPTIONS_PER_IMAGE = 5
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Problem:
    """One defect of a dataset: the file it is in, the 1-based line when it has one, and what is wrong."""

    path: str
    message: str
    line: int | None = None
    kind: str = "format"  # "format" | "empty_caption" | "missing_image" | "unreadable_image"

    def __str__(self) -> str:
        where = f"{self.path}, line {self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


class RSITRDataError(ValueError):
    """Raised when a dataset on disk is malformed; ``problems`` lists every defect found."""

    def __init__(self, problems: list[Problem], hint: str = "", shown: int = 10):
        self.problems = list(problems)
        lines = [str(problem) for problem in self.problems[:shown]]
        if len(self.problems) > shown:
            lines.append(f"... and {len(self.problems) - shown} more problem(s)")
        message = "\n  ".join([f"{len(self.problems)} problem(s) in the dataset:", *lines])
        super().__init__(message + (f"\n{hint}" if hint else ""))


@dataclass
class SplitListing:
    """The captions and image file names of one split, one entry per image.

    ``caption_lines[i][k]`` is the 1-based line of caption ``k`` of image ``i`` in ``captions_path``;
    ``filename_lines[i]`` the line of the image's (first) file name in ``filenames_path``.
    """

    split: str
    captions_path: Path
    filenames_path: Path
    filenames: list[str] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    caption_lines: list[list[int]] = field(default_factory=list)
    filename_lines: list[int] = field(default_factory=list)


def infer_name(data_dir: Path) -> str:
    """``.../rsicd_precomp`` -> ``"rsicd"``."""
    if not data_dir.name.endswith("_precomp"):
        raise ValueError(
            f"cannot infer the dataset name from {str(data_dir)!r}: expected a folder named "
            "'<name>_precomp' (e.g. rsicd_precomp); pass name= explicitly"
        )
    return data_dir.name[: -len("_precomp")]


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file without line endings; a final newline adds no empty line."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_split_listing(data_dir: Path, split: str) -> tuple[SplitListing, list[Problem]]:
    """Read ``<split>_caps.txt`` and ``<split>_filename.txt`` of ``data_dir``.

    Accepts a file-name file with one line per image or one line per caption. Returns the listing of
    every image that could be paired with its captions and all problems found. Empty captions are
    reported as problems but kept in the listing (as ``""``) so that callers can choose what to do.
    """
    captions_path = data_dir / f"{split}_caps.txt"
    filenames_path = data_dir / f"{split}_filename.txt"
    listing = SplitListing(split, captions_path, filenames_path)
    problems = [Problem(str(p), "file not found") for p in (captions_path, filenames_path) if not p.is_file()]
    if problems:
        return listing, problems

    captions = [line.strip() for line in read_lines(captions_path)]
    names = [line.strip() for line in read_lines(filenames_path)]
    num_captions = len(captions)
    if num_captions == 0:
        return listing, [Problem(str(captions_path), "is empty")]
    if num_captions % CAPTIONS_PER_IMAGE:
        problems.append(
            Problem(
                str(captions_path),
                f"has {num_captions} captions, which is not a multiple of {CAPTIONS_PER_IMAGE} "
                f"(each image needs exactly {CAPTIONS_PER_IMAGE} consecutive captions)",
            )
        )
        return listing, problems

    num_images = num_captions // CAPTIONS_PER_IMAGE
    if len(names) == num_images:
        names_per_image = names
        listing.filename_lines = list(range(1, num_images + 1))
    elif len(names) == num_captions:
        names_per_image = []
        for image_index in range(num_images):
            start = image_index * CAPTIONS_PER_IMAGE
            group = names[start : start + CAPTIONS_PER_IMAGE]
            for offset, name in enumerate(group[1:], start=1):
                if name != group[0]:
                    problems.append(
                        Problem(
                            str(filenames_path),
                            f"file name {name!r} differs from {group[0]!r} on line {start + 1}; "
                            f"with one line per caption, each block of {CAPTIONS_PER_IMAGE} lines "
                            "must repeat one name",
                            line=start + offset + 1,
                        )
                    )
            names_per_image.append(group[0])
        listing.filename_lines = [i * CAPTIONS_PER_IMAGE + 1 for i in range(num_images)]
    else:
        problems.append(
            Problem(
                str(filenames_path),
                f"has {len(names)} lines but {captions_path.name} has {num_captions} captions "
                f"({num_images} images); expected {num_images} lines (one per image) or "
                f"{num_captions} (one per caption)",
            )
        )
        return listing, problems

    for image_index, name in enumerate(names_per_image):
        line = listing.filename_lines[image_index]
        if not name:
            problems.append(Problem(str(filenames_path), "empty file name", line=line))
        start = image_index * CAPTIONS_PER_IMAGE
        group_lines = list(range(start + 1, start + CAPTIONS_PER_IMAGE + 1))
        for line_number in group_lines:
            if not captions[line_number - 1]:
                problems.append(
                    Problem(
                        str(captions_path),
                        f"empty caption (image {name!r})",
                        line=line_number,
                        kind="empty_caption",
                    )
                )
        listing.filenames.append(name)
        listing.captions.append(captions[start : start + CAPTIONS_PER_IMAGE])
        listing.caption_lines.append(group_lines)
    return listing, problems
