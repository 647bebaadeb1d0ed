"""Images as uint8 pixels at the model's input size: decoded and resized once, normalised on the device.

CLIP's image preprocessing is split in two halves:

- on the CPU, once per image: decode, convert to RGB, resize the shorter side and centre-crop with the
  processor's own settings, giving ``(3, H, W)`` uint8 (:func:`resize_and_crop`);
- on the device, per batch: rescale and normalise (:class:`PixelNormalizer`), after the training
  augmentation of :mod:`rsitr_hf.data.augmentation` when there is one.

The CPU half is cached with ``datasets`` (:func:`cached_pixels`): one store per processor geometry, made of
memory-mapped Arrow shards holding one row of raw ``(3, H, W)`` bytes per image, keyed by the image's content
(path, size and modification time of a file, or a hash of embedded bytes). Splits, validation carves and runs
over the same images share rows; a changed image gets a new row and a changed input size a new store.
Without the cache, :class:`DecodedPixels` does the same work at read time, in ``DataLoader`` workers.
Both are :class:`PixelSource`\\ s: ``take(rows)`` gives ``(N, 3, H, W)`` uint8.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import datasets
import numpy as np
import torch
from filelock import FileLock

from ..utils.errors import InputError
from ..utils.files import cache_root, write_json
from .images import to_rgb

CACHE_FORMAT_VERSION = 1
PIXEL_FEATURES = datasets.Features({"pixels": datasets.Value("binary")})


def input_shape(image_processor) -> tuple[int, int, int]:
    """``(3, H, W)`` of the images ``image_processor`` produces (its crop size, else its fixed size)."""
    if getattr(image_processor, "do_center_crop", False):
        size = image_processor.crop_size
    else:
        size = image_processor.size
    if "height" not in size or "width" not in size:
        raise ValueError(
            f"{type(image_processor).__name__} resizes to {dict(size)} without a centre crop, so its images "
            "have no fixed shape; batched pixels need a crop_size (CLIP processors have one)"
        )
    return 3, int(size["height"]), int(size["width"])


class ImageDecodeError(InputError):
    """An image of a split that cannot be decoded (truncated, damaged, not an image)."""


class ImageDecoder:
    """Decodes a split's images one at a time, as its ``image`` feature does, naming the file and the split
    of any image that cannot be decoded (:class:`ImageDecodeError`). Picklable, for data-loader workers."""

    def __init__(self, split: datasets.Dataset, split_name: str):
        self.feature = split.features["image"]
        self.split_name = split_name
        self.raw = split.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
        # read only to name an embedded image that fails: the column is not loaded up front
        self.filenames = split.select_columns(["filename"]) if "filename" in split.column_names else None

    def __len__(self) -> int:
        return len(self.raw)

    def decode(self, rows: Sequence[int]) -> list:
        """The PIL images of ``rows``."""
        rows = list(rows)
        return [
            self.decode_entry(entry, row) for entry, row in zip(self.raw[rows]["image"], rows, strict=True)
        ]

    def decode_entry(self, entry: dict, row: int):
        try:
            return self.feature.decode_example(entry)
        except Exception as error:  # PIL raises many types for damaged files
            if entry.get("path"):
                name = entry["path"]
            elif self.filenames is not None:
                name = f"{self.filenames[row]['filename']} (embedded)"
            else:
                name = f"row {row} (embedded)"
            raise ImageDecodeError(
                f"{self.split_name} split: image {name} cannot be decoded ({type(error).__name__}: {error}); "
                "rsitr-validate lists every damaged image of a seed-layout folder"
            ) from None


def resize_and_crop(image_processor, images: Sequence) -> np.ndarray:
    """``(N, 3, H, W)`` uint8: ``images`` (PIL, any mode) converted to RGB, resized and centre-cropped by
    ``image_processor`` exactly as it preprocesses them, without its rescaling and normalisation."""
    shape = input_shape(image_processor)
    if not images:
        return np.empty((0, *shape), dtype=np.uint8)
    resized = image_processor(
        images=[to_rgb(image) for image in images], do_rescale=False, do_normalize=False, return_tensors="np"
    )["pixel_values"]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def resized_without_crop(image_processor):
    """A copy of ``image_processor`` that resizes images straight to its input size (bicubic, no centre crop),
    the HarMA and POSAPL releases' ``Resize((224, 224))``; it equals the original on square images, up to
    resampling."""
    height, width = input_shape(image_processor)[1:]
    resized = copy.deepcopy(image_processor)
    resized.do_center_crop = False
    resized.size = {"height": height, "width": width}
    resized.resample = 3  # PIL's BICUBIC, as the releases
    return resized


class PixelSource(Protocol):
    """Row ``i`` of a split as ``(3, H, W)`` uint8 pixels."""

    shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def take(self, rows: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """``(len(rows), 3, H, W)`` uint8, written into ``out`` when given."""
        ...


class DecodedPixels:
    """A :class:`PixelSource` that decodes and resizes the split's images on every ``take``.

    Picklable, so ``DataLoader`` workers can do the decoding. An image that cannot be decoded raises
    :class:`ImageDecodeError` naming it and ``split_name``.
    """

    def __init__(self, split: datasets.Dataset, image_processor, split_name: str = "the"):
        self.images = ImageDecoder(split, split_name)
        self.image_processor = image_processor
        self.shape = input_shape(image_processor)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, rows: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        pixels = resize_and_crop(self.image_processor, self.images.decode(rows))
        if out is None:
            return pixels
        out[...] = pixels
        return out


class CachedPixels:
    """A :class:`PixelSource` reading a split's rows from the memory-mapped image store of
    :func:`cached_pixels` (``rows[i]``: the store row of the split's image ``i``)."""

    def __init__(self, table: datasets.Dataset, shape: tuple[int, int, int], rows: np.ndarray, folder: Path):
        self.table = table
        self.shape = tuple(shape)
        self.rows = rows
        self.folder = folder

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, rows: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        raw = self.table[self.rows[np.asarray(rows, dtype=np.int64)].tolist()]["pixels"]
        pixels = np.empty((len(raw), *self.shape), dtype=np.uint8) if out is None else out
        for row, data in zip(pixels, raw, strict=True):
            row.reshape(-1)[:] = np.frombuffer(data, dtype=np.uint8)
        return pixels


def processor_geometry(image_processor) -> dict:
    """What decides the cached pixels: the processor's class (PIL or torchvision resizing) and geometry."""
    keys = ("do_convert_rgb", "do_resize", "size", "resample", "do_center_crop", "crop_size")
    values = {key: getattr(image_processor, key, None) for key in keys}
    values = {key: dict(value) if hasattr(value, "keys") else value for key, value in values.items()}
    return {"class": type(image_processor).__name__, **json.loads(json.dumps(values, default=str))}


def store_name(image_processor) -> str:
    """The store folder of a processor geometry: a hash of it and of the cache format."""
    identity = {"version": CACHE_FORMAT_VERSION, "processor": processor_geometry(image_processor)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def image_keys(split: datasets.Dataset) -> list[str]:
    """One key per row naming the image's content: the absolute path with the file's size and modification
    time, or a hash of the bytes of an embedded image."""
    keys = []
    raw = split.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    for batch in raw.iter(batch_size=1000):
        for entry in batch["image"]:
            if entry["bytes"] is not None:
                keys.append("b:" + hashlib.blake2b(entry["bytes"], digest_size=16).hexdigest())
            else:
                path = os.path.abspath(entry["path"])
                stat = os.stat(path)
                keys.append(f"p:{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return keys


def cached_pixels(
    split: datasets.Dataset,
    image_processor,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    split_name: str = "the",
) -> CachedPixels:
    """The split's images as uint8 pixels from a memory-mapped store, resizing those not stored yet.

    The store holds every image ever cached at one processor geometry, keyed by content
    (:func:`image_keys`): splits, validation carves and runs over the same images share its rows, and a
    changed image or input size gets new rows. New images are written as a new Arrow shard in a temporary
    folder, moved in and recorded in ``index.json``, all under a file lock, so an interrupted build leaves
    the store as it was and concurrent runs wait for each other. Every image is decoded once, here: one that
    cannot be raises :class:`ImageDecodeError` naming it and ``split_name``, and nothing is stored.

    Args:
        split: rows of the RSITR schema (an ``image`` column).
        image_processor: the model's image processor (its geometry chooses the store).
        cache_dir: where the stores live (default ``$RSITR_CACHE/images``, i.e. ``~/.cache/rsitr_hf/images``).
        num_proc: processes that decode while building (default: one per 500 new images, at most the CPUs).
        split_name: the split's name in error messages.
    """
    folder = (Path(cache_dir) if cache_dir is not None else cache_root() / "images") / store_name(
        image_processor
    )
    folder.mkdir(parents=True, exist_ok=True)
    keys = image_keys(split)
    with FileLock(str(folder / ".lock")):
        index = read_index(folder, image_processor)
        stored = {key for shard in index["shards"] for key in shard["keys"]}
        missing = list(dict.fromkeys(key for key in keys if key not in stored))
        if missing:
            first_row = {key: row for row, key in reversed(list(enumerate(keys)))}
            rows = [first_row[key] for key in missing]
            new = split.select(rows)
            index["shards"] += write_shards(new, missing, image_processor, folder, num_proc, split_name)
            write_index(folder, index)
    tables = [datasets.Dataset.from_file(str(folder / shard["file"])) for shard in index["shards"]]
    table = datasets.concatenate_datasets(tables) if len(tables) > 1 else tables[0]
    row_of = {key: row for row, key in enumerate(key for shard in index["shards"] for key in shard["keys"])}
    if len(table) != len(row_of):
        raise InputError(f"image cache {folder}: {len(table)} stored rows, index.json lists {len(row_of)}")
    return CachedPixels(
        table, index["shape"], np.array([row_of[key] for key in keys], dtype=np.int64), folder
    )


def read_index(folder: Path, image_processor) -> dict:
    path = folder / "index.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {
        "shape": list(input_shape(image_processor)),
        "processor": processor_geometry(image_processor),
        "shards": [],
    }


def write_index(folder: Path, index: dict) -> None:
    """Replace ``index.json`` atomically (a reader sees the old index or the new one, never half of one)."""
    write_json(folder / "index.json", index, indent=None)


def write_shards(
    new: datasets.Dataset,
    keys: list[str],
    image_processor,
    folder: Path,
    num_proc: int | None,
    split_name: str = "the",
) -> list[dict]:
    """Resize ``new``'s images into Arrow files moved into ``folder``; their index entries."""
    shape = input_shape(image_processor)
    if num_proc is None:
        num_proc = max(1, min(os.cpu_count() or 1, len(new) // 500))
    decoder = ImageDecoder(new, split_name)

    def resize(batch: dict, rows: list[int]) -> dict:
        images = [decoder.decode_entry(entry, row) for entry, row in zip(batch["image"], rows, strict=True)]
        return {"pixels": [row.tobytes() for row in resize_and_crop(image_processor, images)]}

    building = folder / f".building-{uuid.uuid4().hex[:8]}"
    building.mkdir()
    try:
        written = decoder.raw.map(
            resize,
            batched=True,
            with_indices=True,
            batch_size=64,
            remove_columns=["image"],
            features=PIXEL_FEATURES,
            num_proc=num_proc if num_proc > 1 else None,
            cache_file_name=str(building / "pixels.arrow"),
            desc=f"caching {len(new):,} images at {shape[1]}x{shape[2]}",
        )
        entries, start = [], 0
        for file in written.cache_files:  # in row order
            rows = datasets.Dataset.from_file(file["filename"]).num_rows
            name = f"{uuid.uuid4().hex[:12]}.arrow"
            os.replace(file["filename"], folder / name)
            entries.append({"file": name, "keys": keys[start : start + rows]})
            start += rows
        return entries
    finally:
        shutil.rmtree(building, ignore_errors=True)


@dataclass
class PixelNormalizer:
    """The device half of CLIP preprocessing: ``(pixels * rescale_factor - mean) / std`` per channel.

    Takes ``(B, 3, H, W)`` uint8 (or float in ``[0, 255]``, e.g. after augmentation) on any device and
    returns float32 on that device, computed as ``(pixels - mean / rescale_factor) / (std / rescale_factor)``
    (transformers' fused form).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    # (shift, scale) per device, made once: building them per batch would copy to the device every step
    constants: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_processor(cls, image_processor) -> PixelNormalizer:
        do_normalize = getattr(image_processor, "do_normalize", True)
        do_rescale = getattr(image_processor, "do_rescale", True)
        return cls(
            mean=tuple(image_processor.image_mean) if do_normalize else (0.0, 0.0, 0.0),
            std=tuple(image_processor.image_std) if do_normalize else (1.0, 1.0, 1.0),
            rescale_factor=float(image_processor.rescale_factor) if do_rescale else 1.0,
        )

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.device not in self.constants:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
            self.constants[pixels.device] = (
                (mean / self.rescale_factor).to(pixels.device),
                (std / self.rescale_factor).to(pixels.device),
            )
        shift, scale = self.constants[pixels.device]
        return (pixels.float() - shift) / scale
