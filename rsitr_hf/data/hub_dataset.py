"""The RSITR schema from an image folder with ``metadata.jsonl`` or from a Hub dataset repository.

A folder written by :func:`export_imagefolder` (and the same folder pushed to the Hub with
``huggingface-cli upload`` or ``DatasetDict.push_to_hub``) looks like::

    <dir>/train/metadata.jsonl      {"file_name": "a.png", "filename": "a.png", "image_id": 0,
    <dir>/train/a.png                "captions": ["...", "...", "...", "...", "..."]}
    <dir>/validation/...            (optional, or ``valid``/``val``/``dev``; else carved from train)
    <dir>/test/...

:func:`load_rsitr_hub` accepts such a local folder or a Hub dataset id; both go through
``datasets.load_dataset``, so Hub ids need the network (or a populated cache with
``HF_DATASETS_OFFLINE=1``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import datasets

from ..utils.errors import InputError
from .loading import FEATURES, split_validation
from .seed_layout import CAPTIONS_PER_IMAGE

# what published copies call their validation split: ``valid`` (arampacha/rsicd), ``val``, ``dev``
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev")

logger = logging.getLogger(__name__)


class HubDatasetError(InputError, ValueError):
    """A Hub (or parquet / imagefolder) dataset without the splits, columns or captions RSITR needs."""


def export_imagefolder(dataset_dict: datasets.DatasetDict, out_dir: str | os.PathLike) -> Path:
    """Write a DatasetDict of the RSITR schema as an image folder with one ``metadata.jsonl`` per split.

    Images stored as files are copied as they are; images stored as bytes are written as PNG.
    """
    out_dir = Path(out_dir)
    for split, dataset in dataset_dict.items():
        if len(dataset) == 0:
            continue
        split_dir = out_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        raw = dataset.cast_column("image", datasets.Image(decode=False))
        with open(split_dir / "metadata.jsonl", "w", encoding="utf-8") as metadata:
            for row in raw:
                file_name = row["filename"]
                if row["image"]["bytes"] is not None:
                    file_name = Path(file_name).with_suffix(".png").name
                    (split_dir / file_name).write_bytes(row["image"]["bytes"])
                else:
                    shutil.copyfile(row["image"]["path"], split_dir / file_name)
                record = {
                    "file_name": file_name,
                    "filename": row["filename"],
                    "image_id": row["image_id"],
                    "captions": row["captions"],
                }
                metadata.write(json.dumps(record) + "\n")
    return out_dir


def load_rsitr_hub(
    path_or_repo_id: str | os.PathLike,
    validation_fraction: float = 0.2,
    seed: int = 0,
    revision: str | None = None,
    **load_dataset_kwargs,
) -> datasets.DatasetDict:
    """Load an image folder or Hub dataset into the schema of :func:`rsitr_hf.data.load_rsitr`.

    The source needs ``train`` and ``test`` splits with an ``image`` column and a ``captions`` column
    of 5 strings per row. ``filename`` and ``image_id`` are used when present; otherwise the file name
    comes from the image path and ids are assigned in row order (train, then validation, then test).
    The validation split is the first of ``VALIDATION_SPLIT_NAMES`` the source has (the log says which);
    without one, ``validation_fraction`` of ``train`` is carved out as in ``load_rsitr``.
    """
    source = datasets.load_dataset(str(path_or_repo_id), revision=revision, **load_dataset_kwargs)
    for split in ("train", "test"):
        if split not in source:
            raise HubDatasetError(f"{path_or_repo_id}: no {split!r} split (found {sorted(source)})")
    validation = next((name for name in VALIDATION_SPLIT_NAMES if name in source), None)
    sources = {"train": "train", "validation": validation, "test": "test"}
    next_id = 0
    normalised = {}
    for split, name in sources.items():
        if name is None:
            continue
        normalised[split] = to_rsitr_schema(source[name], f"{path_or_repo_id} [{name}]", next_id)
        next_id += len(normalised[split])
    if validation is None:
        logger.info(
            "%s has no validation split (none of %s): carving %.0f%% of train",
            path_or_repo_id,
            ", ".join(VALIDATION_SPLIT_NAMES),
            100 * validation_fraction,
        )
        normalised["train"], normalised["validation"] = split_validation(
            normalised["train"], validation_fraction, seed
        )
    else:
        logger.info(
            "%s: validation split %r (%d images)", path_or_repo_id, validation, len(normalised["validation"])
        )
    return datasets.DatasetDict({split: normalised[split] for split in ("train", "validation", "test")})


def to_rsitr_schema(dataset: datasets.Dataset, where: str, first_id: int = 0) -> datasets.Dataset:
    """Check and convert one split to ``FEATURES``; ``where`` names the split in error messages."""
    missing = {"image", "captions"} - set(dataset.column_names)
    if missing:
        raise HubDatasetError(f"{where}: missing column(s) {sorted(missing)}; found {dataset.column_names}")
    for row_index, captions in enumerate(dataset["captions"]):
        if len(captions) != CAPTIONS_PER_IMAGE:
            raise HubDatasetError(
                f"{where}: row {row_index} has {len(captions)} captions, expected {CAPTIONS_PER_IMAGE}"
            )
        if not all(caption and caption.strip() for caption in captions):
            raise HubDatasetError(f"{where}: row {row_index} has an empty caption")
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    if "filename" not in dataset.column_names:
        raw = raw.add_column("filename", [Path(image["path"] or "").name for image in raw["image"]])
    if "image_id" not in dataset.column_names:
        raw = raw.add_column("image_id", list(range(first_id, first_id + len(raw))))
    extra = [column for column in raw.column_names if column not in FEATURES]
    raw = raw.remove_columns(extra).cast(
        datasets.Features({**FEATURES, "image": datasets.Image(decode=False)})
    )
    return raw.cast_column("image", FEATURES["image"])
