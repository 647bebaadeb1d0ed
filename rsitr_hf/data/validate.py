"""Every problem of a seed-layout dataset at once (what ``rsitr-validate DATA_DIR`` prints), and, for RSICD,
RSITMD and UCM-Captions, whether its split files are the published ones (packaged with rsitr_hf) or how they
differ."""

from __future__ import annotations

import os
from pathlib import Path

from .loading import scan_images
from .reference import splits_dir
from .seed_layout import SPLITS, Problem, duplicate_file_names, infer_name, read_split_listing


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
    listings = []
    for split in SPLITS:
        listing, split_problems = read_split_listing(data_dir, split)
        listings.append(listing)
        problems.extend(split_problems)
        _, image_problems = scan_images(
            images_dir,
            listing.filenames,
            listing.filenames_path,
            listing.filename_lines,
            decode=decode_images,
        )
        problems.extend(image_problems)
    return problems + duplicate_file_names(listings)


SHOWN_DIFFERENCES = 3


def compare_with_standard(data_dir: str | os.PathLike, name: str) -> list[str]:
    """How the split files of ``data_dir`` differ from the published split of ``name`` (one of
    ``STANDARD_DATASETS``): images only in one of them, and images whose five captions differ (in order).
    An empty list means the same images with the same captions; the order of images does not matter."""
    differences = []
    for split in SPLITS:
        ours, _ = read_split_listing(Path(data_dir), split)
        standard, _ = read_split_listing(splits_dir() / f"{name}_precomp", split)
        our_captions = dict(zip(ours.filenames, ours.captions, strict=True))
        standard_captions = dict(zip(standard.filenames, standard.captions, strict=True))
        for label, names in (
            ("not in the standard split", [f for f in our_captions if f not in standard_captions]),
            ("of the standard split missing", [f for f in standard_captions if f not in our_captions]),
        ):
            if names:
                shown = names[:SHOWN_DIFFERENCES]
                differences.append(f"{split}: {len(names)} image(s) {label}, e.g. {shown}")
        changed = [
            (index, filename)
            for index, (filename, captions) in enumerate(zip(ours.filenames, ours.captions, strict=True))
            if filename in standard_captions and captions != standard_captions[filename]
        ]
        for index, filename in changed[:SHOWN_DIFFERENCES]:
            line = ours.caption_lines[index][0]
            differences.append(
                f"{split}: captions of {filename} ({ours.captions_path.name} line {line}) differ from the "
                f"standard {standard_captions[filename]}"
            )
        if len(changed) > SHOWN_DIFFERENCES:
            differences.append(f"{split}: {len(changed)} images with other captions in all")
    return differences


def describe_standard_split(data_dir: str | os.PathLike, name: str) -> str:
    """One verdict on ``data_dir`` against the published split of ``name`` (one of ``STANDARD_DATASETS``)."""
    differences = compare_with_standard(data_dir, name)
    if not differences:
        counts = []
        for split in SPLITS:
            listing, _ = read_split_listing(Path(data_dir), split)
            counts.append(f"{split} {len(listing.filenames):,} images")
        return f"this is the standard {name} split ({', '.join(counts)}, five captions each)"
    return "\n".join([f"differs from the standard {name} split:", *(f"  {d}" for d in differences)])
