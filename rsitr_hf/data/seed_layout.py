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

from ..utils.errors import InputError

CAPTIONS_PER_IMAGE = 5
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Problem:
    """One defect of a dataset: the file it is in, the 1-based line when it has one, and what is wrong."""

    path: str
    message: str
    line: int | None = None
    kind: str = "format"  # "format" | "encoding" | "empty_caption" | "missing_image" | "unreadable_image"

    def __str__(self) -> str:
        where = f"{self.path}, line {self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


class RSITRDataError(InputError, ValueError):
    """Raised when a dataset on disk is malformed; ``problems`` lists every defect found. The message is
    one line: the first problem, how many more there are, and the ``hint``."""

    def __init__(self, problems: list[Problem], hint: str = ""):
        self.problems = list(problems)
        message = str(self.problems[0])
        if len(self.problems) > 1:
            message += f" (and {len(self.problems) - 1} more problem(s))"
        super().__init__(f"{message}. {hint}" if hint else message)


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
        raise RSITRDataError(
            [
                Problem(
                    str(data_dir),
                    "cannot infer the dataset name: expected a folder named '<name>_precomp' (e.g. "
                    "rsicd_precomp), or give the name (--name, data.name)",
                )
            ]
        )
    return data_dir.name[: -len("_precomp")]


def decode_utf8(path: Path) -> tuple[str | None, Problem | None]:
    """The text of ``path``, or the problem naming the line and byte where it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        byte, column = data[error.start], error.start - line_start + 1
        message = (
            f"is not UTF-8: byte 0x{byte:02x} at byte {column} of the line (offset {error.start} of the "
            f"file): {error.reason}; save the file as UTF-8"
        )
        return None, Problem(str(path), message, data.count(b"\n", 0, error.start) + 1, kind="encoding")


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file without line endings; a final newline adds no empty line.

    Raises:
        RSITRDataError: naming the line and byte where the file is not UTF-8.
    """
    text, problem = decode_utf8(path)
    if problem is not None:
        raise RSITRDataError([problem])
    return split_lines(text)


def split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def trailing_blank_lines(path: Path, lines: list[str]) -> list[Problem]:
    """Remove the blank lines at the end of ``lines`` and name each of them."""
    problems = []
    while lines and not lines[-1].strip():
        problems.insert(
            0, Problem(str(path), "blank line at the end of the file; delete it", line=len(lines))
        )
        lines.pop()
    return problems


def read_listing_file(path: Path, captions: bool) -> tuple[list[str], list[Problem]]:
    """The stripped lines of a caption or file-name file and the problems of its text: not UTF-8, blank
    lines at its end (in a caption file, only where they break the five-per-image blocks; otherwise they
    are the empty captions of its last image)."""
    text, problem = decode_utf8(path)
    if problem is not None:
        return [], [problem]
    lines = [line.strip() for line in split_lines(text)]
    if captions and len(lines) % CAPTIONS_PER_IMAGE == 0:
        return lines, []
    return lines, trailing_blank_lines(path, lines)


def duplicate_file_names(listings: list[SplitListing]) -> list[Problem]:
    """An image listed twice (in one split or in two) would be one image with two ids; name both lines."""
    first_seen: dict[str, tuple[SplitListing, int]] = {}
    problems = []
    for listing in listings:
        for name, line in zip(listing.filenames, listing.filename_lines, strict=True):
            if not name:
                continue
            if name in first_seen:
                other, other_line = first_seen[name]
                where = "" if other is listing else f" of {other.filenames_path.name}"
                problems.append(
                    Problem(
                        str(listing.filenames_path),
                        f"file name {name!r} is listed twice (also on line {other_line}{where}); each image "
                        "is listed once",
                        line=line,
                    )
                )
            else:
                first_seen[name] = (listing, line)
    return problems


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

    captions, caption_problems = read_listing_file(captions_path, captions=True)
    names, name_problems = read_listing_file(filenames_path, captions=False)
    problems = caption_problems + name_problems
    if any(problem.kind == "encoding" for problem in problems):
        return listing, problems
    num_captions = len(captions)
    if num_captions == 0:
        return listing, [*problems, Problem(str(captions_path), "is empty")]
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
