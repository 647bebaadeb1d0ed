"""RSITR benchmarks as ``datasets.DatasetDict`` with one row per image.

Schema of every split (``FEATURES``):

- ``image``: ``datasets.Image(mode="RGB")``, decoded lazily; 16-bit or float images are rescaled to
  8 bits when the dataset is built (see :mod:`rsitr_hf.data.images`).
- ``image_id``: int, unique within the DatasetDict. In the seed layout it is the image's position in
  ``train_filename.txt`` (``0 .. N_train-1``), then ``N_train + position`` in ``test_filename.txt``.
- ``filename``: the image file name.
- ``captions``: the image's 5 captions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import datasets
import numpy as np

from .images import decode_fully, needs_rescaling, rgb_png_bytes
from .seed_layout import (
    CAPTIONS_PER_IMAGE,
    SPLITS,
    Problem,
    RSITRDataError,
    duplicate_file_names,
    infer_name,
    read_split_listing,
)

logger = logging.getLogger(__name__)

FEATURES = datasets.Features(
    {
        "image": datasets.Image(mode="RGB"),
        "image_id": datasets.Value("int64"),
        "filename": datasets.Value("string"),
        "captions": datasets.List(datasets.Value("string")),
    }
)
CAPTION_FEATURES = datasets.Features(
    {
        "image": datasets.Image(mode="RGB"),
        "image_id": datasets.Value("int64"),
        "filename": datasets.Value("string"),
        "caption": datasets.Value("string"),
    }
)
EmptyCaptionPolicy = Literal["error", "keep", "drop"]


def image_entry(path: Path) -> dict:
    """The ``datasets.Image`` value for a file: its path, or 8-bit PNG bytes when it must be rescaled.

    Rescaled images carry no path: ``datasets`` would otherwise re-read the original file.
    """
    if needs_rescaling(path):
        return {"path": None, "bytes": rgb_png_bytes(path)}
    return {"path": str(path), "bytes": None}


def scan_images(
    images_dir: Path, filenames: Iterable[str], listed_in: Path, lines: Iterable[int], decode: bool = False
) -> tuple[list[dict | None], list[Problem]]:
    """Check that every listed image exists and can be opened (fully decoded when ``decode``).

    Returns one ``datasets.Image`` value per file name (``None`` for a bad image) and the problems.
    """
    entries: list[dict | None] = []
    problems: list[Problem] = []
    for name, line in zip(filenames, lines, strict=True):
        path = images_dir / name
        where = f"(listed in {listed_in.name}, line {line})"
        if not path.is_file():
            problems.append(Problem(str(path), f"image file is missing {where}", kind="missing_image"))
            entries.append(None)
            continue
        try:
            if decode:
                decode_fully(path)
            entries.append(image_entry(path))
        except Exception as error:  # PIL raises many types for corrupt files
            problems.append(
                Problem(str(path), f"image cannot be decoded {where}: {error}", kind="unreadable_image")
            )
            entries.append(None)
    return entries, problems


def load_rsitr(
    data_dir: str | os.PathLike,
    name: str | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
    empty_captions: EmptyCaptionPolicy = "error",
) -> datasets.DatasetDict:
    """Load a benchmark in the seed layout as a DatasetDict with splits train, validation and test.

    Args:
        data_dir: ``<root>/<name>_precomp``, holding ``<name>_images/`` and the caption/file-name files.
        name: dataset name; inferred from ``data_dir`` (``rsicd_precomp`` -> ``rsicd``) when omitted.
        validation_fraction: share of the published train images moved to ``validation``
            (by image, deterministic for ``seed``); 0 gives an empty validation split.
        seed: seed of the validation carve.
        empty_captions: ``"error"`` raises on empty captions (the published RSITMD train split has 4
            images whose 5 captions are all empty), ``"drop"`` removes images with an empty caption,
            ``"keep"`` keeps them with ``""`` captions.

    Raises:
        RSITRDataError: listing every malformed line, missing or unreadable image (first 10 shown).
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise RSITRDataError(
            [Problem("validation_fraction", f"expected a number in [0, 1), got {validation_fraction}")]
        )
    if empty_captions not in ("error", "keep", "drop"):
        raise RSITRDataError(
            [Problem("empty_captions", f"expected 'error', 'keep' or 'drop', got {empty_captions!r}")]
        )
    data_dir = Path(data_dir)
    name = name or infer_name(data_dir)
    images_dir = data_dir / f"{name}_images"
    if not images_dir.is_dir():
        raise RSITRDataError([Problem(str(images_dir), "image folder not found")])

    problems: list[Problem] = []
    columns_by_split = {}
    first_id = 0
    listings = []
    for split in SPLITS:
        listing, split_problems = read_split_listing(data_dir, split)
        listings.append(listing)
        empty = {i for i, caps in enumerate(listing.captions) if not all(caps)}
        if empty_captions != "error":
            split_problems = [p for p in split_problems if p.kind != "empty_caption"]
        problems.extend(split_problems)
        keep = [i for i in range(len(listing.filenames)) if empty_captions != "drop" or i not in empty]
        if empty_captions == "drop" and empty:
            logger.warning("%s: dropped %d image(s) with empty captions", listing.captions_path, len(empty))
        entries, image_problems = scan_images(
            images_dir,
            [listing.filenames[i] for i in keep],
            listing.filenames_path,
            [listing.filename_lines[i] for i in keep],
        )
        problems.extend(image_problems)
        columns_by_split[split] = {
            "image": entries,
            "image_id": [first_id + i for i in keep],
            "filename": [listing.filenames[i] for i in keep],
            "captions": [listing.captions[i] for i in keep],
        }
        first_id += len(listing.filenames)
    problems.extend(duplicate_file_names(listings))
    if problems:
        raise RSITRDataError(
            problems,
            hint=f"Run `rsitr-validate {data_dir}` to list every problem at once."
            + (
                " Pass empty_captions='drop' or 'keep' to accept empty captions."
                if any(p.kind == "empty_caption" for p in problems)
                else ""
            ),
        )

    train = datasets.Dataset.from_dict(columns_by_split["train"], features=FEATURES)
    test = datasets.Dataset.from_dict(columns_by_split["test"], features=FEATURES)
    train, validation = split_validation(train, validation_fraction, seed)
    return datasets.DatasetDict({"train": train, "validation": validation, "test": test})


def split_validation(
    train: datasets.Dataset, validation_fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Move ``round(fraction * len(train))`` randomly chosen images (seeded) out of ``train``.

    Both parts keep the original row order.
    """
    num_validation = int(round(validation_fraction * len(train)))
    order = np.random.default_rng(seed).permutation(len(train))
    validation_rows = np.sort(order[:num_validation])
    train_rows = np.sort(order[num_validation:])
    return train.select(train_rows), train.select(validation_rows)


# per-image list columns -> their one-row-per-caption names (POS columns come from rsitr_hf.data.pos)
PER_CAPTION_COLUMNS = {
    "captions": "caption",
    "pos_captions": "pos_caption",
    "pos_tags": "pos_tags",
    "pos_sentences": "pos_sentence",
    "pos_tag_ids": "pos_tag_ids",
}


def explode_captions(dataset: datasets.Dataset) -> datasets.Dataset:
    """One row per caption, in image order: the image's columns (``image``, ``image_id``, ``filename``),
    ``caption`` and the per-caption entries of any POS columns (``pos_caption``, ``pos_tags``,
    ``pos_sentence``, ``pos_tag_ids``), plus ``image_row`` (the image's row in ``dataset``) and
    ``pair_index`` (``5 * image_row + k``, stable for seeding per-example augmentation).

    Images are not decoded or copied: rows point at the same files or bytes as ``dataset``. A dataset without
    an ``image`` column (the training pairs, whose pixels come from a cache) works the same way.
    """
    has_image = "image" in dataset.column_names
    undecoded = dataset.cast_column("image", datasets.Image(decode=False)) if has_image else dataset
    listed = {
        column: PER_CAPTION_COLUMNS[column]
        for column in undecoded.column_names
        if column in PER_CAPTION_COLUMNS
    }
    shared = [column for column in undecoded.column_names if column not in listed]
    features = datasets.Features(
        {
            **{column: undecoded.features[column] for column in shared},
            **{single: undecoded.features[column].feature for column, single in listed.items()},
            "image_row": datasets.Value("int64"),
            "pair_index": datasets.Value("int64"),
        }
    )

    def explode(batch: dict, rows: list[int]) -> dict:
        out = {column: [] for column in features}
        for row, row_index in enumerate(rows):
            for index in range(len(batch["captions"][row])):
                out["image_row"].append(row_index)
                out["pair_index"].append(CAPTIONS_PER_IMAGE * row_index + index)
                for column in shared:
                    out[column].append(batch[column][row])
                for column, single in listed.items():
                    out[single].append(batch[column][row][index])
        return out

    exploded = undecoded.map(
        explode,
        batched=True,
        with_indices=True,
        remove_columns=undecoded.column_names,
        features=features,
        desc="one row per caption",
    )
    return exploded.cast_column("image", datasets.Image(mode="RGB")) if has_image else exploded
