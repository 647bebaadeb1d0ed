"""The data of a training run: the recipe's splits (with POS columns for a method that takes POS inputs),
each split's images as uint8 pixels (cached or decoded), the training caption pairs and their loader, and
the on-device image transform (augmentation, then CLIP's normalisation), and the processor that gives
the images their size. Training images that an audit links to the test split can be left out."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import CLIPProcessor

from ..data import load_rsitr, load_rsitr_hub
from ..data.augmentation import RandomResizedCropFlip
from ..data.duplicates import audit, linked_training_files
from ..data.pixels import DecodedPixels, PixelNormalizer, PixelSource, cached_pixels, resized_without_crop
from ..data.pos import cached_pos_dataset
from ..data.preprocessing import ImageBatchTransform, RetrievalCollator, caption_pairs
from ..data.randaugment import RandAugment
from ..data.release_augment import MAX_LEVEL, ReleaseRandomAugment
from ..data.seed_layout import RSITRDataError, infer_name
from .recipe import Recipe, RecipeError

MAX_AUTO_WORKERS = 8
RANDAUGMENT = {"release": (ReleaseRandomAugment, MAX_LEVEL), "torchvision": (RandAugment, 30)}


@dataclass
class RunData:
    """The splits of a run, each split's images as uint8 pixels (cached or decoded), the training caption
    pairs (tokenised, one row per caption), the data-loader workers, the POS inputs the method takes
    (``"sentence"``/``"aligned"``, or ``None``) and what ``data.exclude_test_duplicates`` dropped (empty when
    it is off)."""

    dataset: datasets.DatasetDict
    pixels: dict[str, PixelSource]
    pairs: datasets.Dataset
    num_workers: int
    pos_mode: str | None
    excluded: dict = field(default_factory=dict)


def resolve_num_workers(value: int | str, device: torch.device, local_processes: int) -> int:
    """``training.num_workers``: a number as given; ``auto`` is 0 on the CPU (the cores are training the
    model, and the cached pipeline keeps up in the main process), else the CPUs per local process minus
    one (the process itself), at most ``MAX_AUTO_WORKERS``."""
    if value != "auto":
        return int(value)
    if device.type == "cpu":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, local_processes) - 1))


def load_data(recipe: Recipe, tokenizer, pos_mode: str | None) -> datasets.DatasetDict:
    """The DatasetDict of the recipe; with POS columns (tagged once, then cached) when ``pos_mode`` is set."""
    data = recipe.data
    if not data.path:
        raise RecipeError("data.path: give the dataset folder or Hub dataset id")
    if data.format == "seed":
        dataset = load_rsitr(
            data.path, data.name, data.validation_fraction, data.split_seed, data.empty_captions
        )
    else:
        dataset = load_rsitr_hub(data.path, data.validation_fraction, data.split_seed)
    if pos_mode is None:
        return dataset
    keys = ("format", "path", "name", "validation_fraction", "split_seed", "empty_captions")
    identity = {key: getattr(data, key) for key in keys}
    if data.format != "hub":
        identity["path"] = str(Path(data.path).resolve())
    return cached_pos_dataset(
        dataset,
        identity,
        tokenizer,
        data.pos_cache,
        data.pos_model,
        data.stanza_dir,
        data.caption_normalisation,
    )


def audit_manifest(recipe: Recipe) -> tuple[dict, str]:
    """``data.exclude_test_duplicates``'s manifest (rsitr-audit's ``audit.json``, read or computed now) and
    where it came from."""
    setting = recipe.data.exclude_test_duplicates
    if setting is True:
        return audit([recipe.data.path]).manifest(), "audited when the run started (exact, perceptual)"
    try:
        return json.loads(Path(setting).read_text(encoding="utf-8")), str(setting)
    except (OSError, json.JSONDecodeError) as error:
        raise RecipeError(
            f"data.exclude_test_duplicates: {setting} is not a readable audit.json ({error})"
        ) from None


def drop_test_duplicates(recipe: Recipe, dataset: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
    """``dataset`` without the train and validation images that the audit links to its test split, and the
    record of what was dropped (``{}`` when ``data.exclude_test_duplicates`` is off)."""
    if recipe.data.exclude_test_duplicates is False:
        return dataset, {}
    if recipe.data.format != "seed":
        raise RecipeError(
            "data.exclude_test_duplicates: audits read the seed layout (data.format: seed); export the data "
            "to it first"
        )
    manifest, source = audit_manifest(recipe)
    name = dataset_name(recipe)
    linked = linked_training_files(manifest, name, [name])
    kept, dropped = {}, {}
    for split, rows in dataset.items():
        if split == "test":
            kept[split] = rows
            continue
        dropped[split] = sorted(set(rows["filename"]) & linked)
        kept[split] = rows.filter(lambda filename: filename not in linked, input_columns="filename")
    return datasets.DatasetDict(kept), {"manifest": source, "dataset": name, "dropped": dropped}


def prepare_data(recipe: Recipe, processor, pos_mode: str | None, accelerator: Accelerator) -> RunData:
    """Load the splits (without audited test duplicates, when asked) and their pixels; the main process
    builds the caches first, the others reuse them."""
    with accelerator.main_process_first():
        dataset, excluded = drop_test_duplicates(recipe, load_data(recipe, processor.tokenizer, pos_mode))
        pixels = {}
        for split, rows in dataset.items():
            if recipe.data.cache_images and len(rows):
                pixels[split] = cached_pixels(
                    rows, processor.image_processor, recipe.data.image_cache, split_name=split
                )
            else:
                pixels[split] = DecodedPixels(rows, processor.image_processor, split)
    pairs = caption_pairs(dataset["train"], processor.tokenizer, pos_mode)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    num_workers = resolve_num_workers(recipe.training.num_workers, accelerator.device, local_processes)
    return RunData(dataset, pixels, pairs, num_workers, pos_mode, excluded)


def check_test_datasets(recipe: Recipe) -> None:
    """``evaluation.test_datasets`` must be seed-layout folders (checked when the run starts)."""
    for path in recipe.evaluation.test_datasets:
        if not Path(path).is_dir():
            raise RecipeError(f"evaluation.test_datasets: {path} is not a folder (expected <name>_precomp)")
        try:
            infer_name(Path(path))
        except RSITRDataError as error:
            raise RecipeError(f"evaluation.test_datasets: {error}") from None


def dataset_name(recipe: Recipe) -> str:
    """The name of the recipe's dataset: ``data.name``, else the seed folder's (``rsicd_precomp`` ->
    ``rsicd``), else the last part of the path or Hub id."""
    data = recipe.data
    if data.name:
        return data.name
    return infer_name(Path(data.path)) if data.format == "seed" else Path(data.path).name


def test_split_of(
    recipe: Recipe, path: str, processor, pos_mode: str | None
) -> tuple[datasets.Dataset, PixelSource]:
    """The test split of the seed-layout dataset at ``path`` (with the POS inputs the method takes) and its
    pixels, loaded as the run's own data is."""
    settings = {"format": "seed", "path": path, "name": None, "validation_fraction": 0.0}
    other = replace(recipe, data=replace(recipe.data, **settings, exclude_test_duplicates=False))
    rows = load_data(other, processor.tokenizer, pos_mode)["test"]
    name = infer_name(Path(path))
    if recipe.data.cache_images:
        return rows, cached_pixels(rows, processor.image_processor, recipe.data.image_cache, split_name=name)
    return rows, DecodedPixels(rows, processor.image_processor, name)


def training_loader(recipe: Recipe, data: RunData, pad_token_id: int, device: torch.device) -> DataLoader:
    """Shuffled batches of caption pairs with their images as uint8 pixels (see ``RetrievalCollator``)."""
    return DataLoader(
        data.pairs,
        batch_size=recipe.training.batch_size,
        shuffle=True,
        collate_fn=RetrievalCollator(data.pixels["train"], pad_token_id),
        num_workers=data.num_workers,
        persistent_workers=data.num_workers > 0,
        pin_memory=device.type == "cuda",
        # its own generator: a new iterator must not draw from the global RNG that checkpoints restore
        generator=torch.Generator().manual_seed(recipe.training.seed),
    )


def load_processor(recipe: Recipe) -> CLIPProcessor:
    """The base model's processor; with ``data.image_preprocessing: paper``, its images plain-resized to the
    input size without a centre crop, as the HarMA and POSAPL releases evaluate (saved with the adapter, so
    search and evaluation of the adapter see images the same way)."""
    processor = CLIPProcessor.from_pretrained(recipe.base_model)
    if recipe.data.image_preprocessing == "paper":
        processor.image_processor = resized_without_crop(processor.image_processor)
    return processor


def image_transform(recipe: Recipe, processor) -> ImageBatchTransform:
    """uint8 pixels -> ``pixel_values`` on the device: the crop and flip (``data.augment``), then RandAugment
    (``data.randaugment`` of ``data.randaugment_kind``), each drawn per example, then CLIP's normalisation."""
    data, seed = recipe.data, recipe.training.seed
    rand_augment = None
    if data.randaugment is not None:
        kind, most = RANDAUGMENT[data.randaugment_kind]
        if len(data.randaugment) != 2 or data.randaugment[1] > most:
            raise RecipeError(
                f"data.randaugment: expected [num_ops, magnitude] with magnitude 0-{most} "
                f"({data.randaugment_kind}), got {data.randaugment}"
            )
        rand_augment = kind(num_ops=data.randaugment[0], magnitude=data.randaugment[1], seed=seed)
    return ImageBatchTransform(
        PixelNormalizer.from_processor(processor.image_processor),
        RandomResizedCropFlip(seed=seed) if data.augment else None,
        rand_augment,
    )
