"""The data of a training run: the recipe's splits, each split's images as uint8 pixels (cached or decoded),
the training caption pairs with the method's text inputs and their loader, the on-device image transform
(augmentation, then CLIP's normalisation), and the processor that gives the images their size. Training
images that an audit links to the test split can be left out."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import CLIPProcessor

from ..data import load_rsitr, load_rsitr_hub
from ..data.augmentation import RandomResizedCropFlip
from ..data.duplicates import audit, linked_training_files
from ..data.pixels import DecodedPixels, PixelNormalizer, PixelSource, cached_pixels, resized_without_crop
from ..data.preprocessing import ImageBatchTransform, RetrievalCollator, caption_pairs
from ..data.randaugment import RandAugment
from ..data.release_augment import MAX_LEVEL, ReleaseRandomAugment
from ..data.sampling import EpochWeightedSampler, example_weights, group_shares
from ..data.seed_layout import RSITRDataError, infer_name
from ..data.text_inputs import TextInputs
from ..utils.processes import available_cpus
from .recipe import DatasetSource, Recipe, RecipeError, dataset_sources

MAX_AUTO_WORKERS = 8
RANDAUGMENT = {"release": (ReleaseRandomAugment, MAX_LEVEL), "torchvision": (RandAugment, 30)}


@dataclass
class RunData:
    """The data of a run. ``splits``: each dataset's ``train``/``validation``/``test`` by name, in the
    recipe's order; ``pixels``: each dataset's validation and test images as uint8 pixels (cached or decoded);
    ``train``: every dataset's training split, concatenated with their image ids made distinct, and
    ``train_pixels``; ``pairs``: its caption pairs (tokenised, one row per caption) and ``pair_weights``
    (how often each is drawn; ``None``: a plain shuffle); ``mix``: what each dataset brings to training
    (:func:`training_mix`); the data-loader workers, the method's text inputs (which encoded the pairs and
    encode every evaluated caption) and what ``data.exclude_test_duplicates`` dropped (empty when it is
    off)."""

    splits: dict[str, datasets.DatasetDict]
    pixels: dict[str, dict[str, PixelSource]]
    train: datasets.Dataset
    train_pixels: PixelSource
    pairs: datasets.Dataset
    pair_weights: list[float] | None
    mix: dict
    num_workers: int
    text_inputs: TextInputs
    excluded: dict = field(default_factory=dict)

    def evaluated(self, split: str) -> dict[str, tuple[datasets.Dataset, PixelSource]]:
        """``{dataset: (rows, pixels)}`` of every dataset whose ``split`` (validation, test) has rows."""
        return {
            name: (splits[split], self.pixels[name][split])
            for name, splits in self.splits.items()
            if len(splits[split])
        }


def resolve_num_workers(value: int | str, device: torch.device, local_processes: int) -> int:
    """``training.num_workers``: a number as given; ``auto`` is 0 on the CPU (the cores are training the
    model, and the cached pipeline keeps up in the main process), else the CPUs per local process minus
    one (the process itself), at most ``MAX_AUTO_WORKERS``."""
    if value != "auto":
        return int(value)
    if device.type == "cpu":
        return 0
    return max(1, min(MAX_AUTO_WORKERS, available_cpus() // max(1, local_processes) - 1))


def source_name(source: DatasetSource) -> str:
    """A dataset's name: ``name``, else the seed folder's (``rsicd_precomp`` -> ``rsicd``), else the last part
    of the path or Hub id."""
    if source.name:
        return source.name
    return infer_name(Path(source.path)) if source.format == "seed" else Path(source.path).name


def named_sources(recipe: Recipe) -> dict[str, DatasetSource]:
    """The recipe's datasets by name (:func:`~rsitr_hf.training.recipe.dataset_sources`); names must differ,
    from each other and from ``evaluation.test_datasets``'."""
    named = {}
    for index, source in enumerate(dataset_sources(recipe.data)):
        where = f"data.datasets[{index}]" if recipe.data.datasets else "data.path"
        if source.format == "seed" and not Path(source.path).is_dir():
            field = f"{where}.path" if recipe.data.datasets else where
            raise RecipeError(
                f"{field}: {source.path} is not a folder (expected a seed-layout <name>_precomp)"
            )
        try:
            name = source_name(source)
        except RSITRDataError as error:
            raise RecipeError(f"{where}: {error}") from None
        if name in named:
            raise RecipeError(f"{where}: a second dataset named {name!r}; give one of them another name")
        named[name] = source
    for path in recipe.evaluation.test_datasets:
        if Path(path).is_dir() and Path(path).name.endswith("_precomp") and infer_name(Path(path)) in named:
            raise RecipeError(
                f"evaluation.test_datasets: {path} is a dataset the run trains on (its test split is scored "
                "anyway); list only other datasets"
            )
    return named


def dataset_name(recipe: Recipe) -> str:
    """The recipe's dataset name; with several datasets, their names joined by ``+`` (``rsicd+rsitmd``)."""
    return "+".join(named_sources(recipe))


def load_source(source: DatasetSource) -> datasets.DatasetDict:
    """The DatasetDict of one dataset of the recipe."""
    if source.format == "seed":
        return load_rsitr(
            source.path, source.name, source.validation_fraction, source.split_seed, source.empty_captions
        )
    return load_rsitr_hub(source.path, source.validation_fraction, source.split_seed)


def load_datasets(recipe: Recipe) -> dict[str, datasets.DatasetDict]:
    """Every dataset of the recipe by name (:func:`load_source`); a seed-layout folder that is not there is
    named by its recipe field (:func:`named_sources`)."""
    return {name: load_source(source) for name, source in named_sources(recipe).items()}


def audit_manifest(recipe: Recipe) -> tuple[dict, str]:
    """``data.exclude_test_duplicates``'s manifest (rsitr-audit's ``audit.json``, read, or computed now over
    the run's datasets and ``evaluation.test_datasets``) and where it came from."""
    setting = recipe.data.exclude_test_duplicates
    if setting is True:
        folders = [source.path for source in dataset_sources(recipe.data)] + recipe.evaluation.test_datasets
        return audit(folders).manifest(), "audited when the run started (rsitr-audit's defaults)"
    try:
        manifest = json.loads(Path(setting).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RecipeError(
            f"data.exclude_test_duplicates: {setting} is not a readable audit.json ({error})"
        ) from None
    problem = manifest_problem(manifest)
    if problem:
        raise RecipeError(
            f"data.exclude_test_duplicates: {setting}: {problem} (expected rsitr-audit's audit.json)"
        )
    return manifest, str(setting)


def manifest_problem(manifest) -> str | None:
    """What an audit manifest lacks that exclusion reads, or ``None``."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("datasets"), list):
        return "no datasets list"
    for index, entry in enumerate(manifest["datasets"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
            return f"datasets[{index}] has no name"
        if not isinstance(entry.get("images_audited"), bool):
            return f"datasets[{index}] has no images_audited: true/false"
    if not isinstance(manifest.get("image_pairs"), list):
        return "no image_pairs list"
    for index, pair in enumerate(manifest["image_pairs"]):
        if not isinstance(pair, dict) or not isinstance(pair.get("verified"), bool):
            return f"image_pairs[{index}] has no verified: true/false"
        for side in ("a", "b"):
            where = pair.get(side)
            if not isinstance(where, dict) or not all(isinstance(where.get(key), str) for key in WHERE):
                return f"image_pairs[{index}].{side} lacks one of {', '.join(WHERE)}"
    return None


WHERE = ("dataset", "split", "file")


def unaudited(manifest: dict, names: list[str]) -> str | None:
    """Which of the datasets ``names`` the manifest did not compare by their images, said in a line, or
    ``None``: a manifest of other datasets would exclude nothing without a word."""
    images = {entry["name"]: entry["images_audited"] for entry in manifest["datasets"]}
    missing = [name for name in names if not images.get(name)]
    if not missing:
        return None
    audited = [name for name, compared in images.items() if compared]
    return (
        f"its images are those of {', '.join(audited) or 'no dataset'}, not of {', '.join(missing)} "
        "(audit the run's datasets and evaluation.test_datasets together)"
    )


def drop_test_duplicates(
    recipe: Recipe, splits: dict[str, datasets.DatasetDict]
) -> tuple[dict[str, datasets.DatasetDict], dict]:
    """``splits`` (by dataset) without the train and validation images that the audit links to a test split
    the run scores (its datasets' and ``evaluation.test_datasets``'), and the record of what was dropped
    (``{}`` when ``data.exclude_test_duplicates`` is off). Datasets are matched to the audit's by their
    folder names, as rsitr-audit names them."""
    if recipe.data.exclude_test_duplicates is False:
        return splits, {}
    sources = named_sources(recipe)
    if any(source.format != "seed" for source in sources.values()):
        raise RecipeError(
            "data.exclude_test_duplicates: audits read the seed layout (format: seed); export the data to "
            "it first"
        )
    manifest, origin = audit_manifest(recipe)
    audited = {name: infer_name(Path(source.path)) for name, source in sources.items()}
    evaluated = [*audited.values(), *(infer_name(Path(p)) for p in recipe.evaluation.test_datasets)]
    problem = unaudited(manifest, list(dict.fromkeys(evaluated)))
    if problem:
        raise RecipeError(f"data.exclude_test_duplicates: {origin}: {problem}")
    kept, dropped = {}, {}
    for name, dataset in splits.items():
        linked = linked_training_files(
            manifest, audited[name], evaluated, recipe.data.exclude_unverified_candidates
        )
        dropped[name] = {split: sorted(set(dataset[split]["filename"]) & linked) for split in TRAINED_SPLITS}
        kept[name] = datasets.DatasetDict(
            {split: without_files(rows, linked) if split in TRAINED_SPLITS else rows
             for split, rows in dataset.items()}
        )  # fmt: skip
    pairs = (
        "verified and unverified candidate pairs"
        if recipe.data.exclude_unverified_candidates
        else "verified pairs"
    )
    return kept, {"manifest": origin, "pairs": pairs, "test_splits_of": evaluated, "dropped": dropped}


TRAINED_SPLITS = ("train", "validation")


def without_files(rows: datasets.Dataset, files: set[str]) -> datasets.Dataset:
    """``rows`` without those whose ``filename`` is in ``files``."""
    return rows.select([row for row, name in enumerate(rows["filename"]) if name not in files])


def shifted_ids(ids: list[int], offset: int) -> dict:
    return {"image_id": [image_id + offset for image_id in ids]}


def concatenate_training(splits: dict[str, datasets.DatasetDict]) -> datasets.Dataset:
    """Every dataset's training split in one, in the recipe's order, each dataset's image ids shifted past
    the previous ones' (ids are unique only within a dataset)."""
    parts, offset = [], 0
    for dataset in splits.values():
        train = dataset["train"]
        if offset:
            train = train.map(
                shifted_ids, input_columns="image_id", batched=True, fn_kwargs={"offset": offset}
            )
        parts.append(train)
        offset += 1 + max((max(split["image_id"], default=-1) for split in dataset.values()), default=-1)
    if len(parts) == 1:
        return parts[0]
    features = parts[0].features
    return datasets.concatenate_datasets([p if p.features == features else p.cast(features) for p in parts])


def pixels_of(recipe: Recipe, rows: datasets.Dataset, processor, split_name: str) -> PixelSource:
    """The uint8 pixels of ``rows``: from the image cache (``data.cache_images``), else decoded when read."""
    if recipe.data.cache_images and len(rows):
        return cached_pixels(rows, processor.image_processor, recipe.data.image_cache, split_name=split_name)
    return DecodedPixels(rows, processor.image_processor, split_name)


def training_mix(
    recipe: Recipe, splits: dict[str, datasets.DatasetDict], pairs: datasets.Dataset
) -> tuple[list[float] | None, dict]:
    """Each caption pair's sampling weight (its dataset's ``weight``; ``None`` when all are equal) and, by
    dataset, its training images, pairs, weight and expected share of the draws (``metrics.json``'s
    ``training_data``)."""
    sources = named_sources(recipe)
    ends = np.cumsum([len(dataset["train"]) for dataset in splits.values()])
    group = np.searchsorted(ends, np.asarray(pairs["image_row"]), side="right")
    sizes = np.bincount(group, minlength=len(ends)).tolist()
    weights = [sources[name].weight for name in splits]
    shares = group_shares(sizes, weights)
    mix = {
        name: {"train_images": len(dataset["train"]), "train_pairs": size, "weight": weight, "share": share}
        for (name, dataset), size, weight, share in zip(splits.items(), sizes, weights, shares, strict=True)
    }
    return example_weights(sizes, weights), mix


def prepare_data(recipe: Recipe, processor, text_inputs: TextInputs, accelerator: Accelerator) -> RunData:
    """Load the datasets (without audited test duplicates, when asked), concatenate their training splits,
    get every split's pixels and encode the training captions with ``text_inputs`` (whatever they prepare for
    every caption, POS tags for one, is done once for all splits); the main process builds the caches first,
    the others reuse them."""
    with accelerator.main_process_first():
        splits = load_datasets(recipe)
        splits, excluded = drop_test_duplicates(recipe, splits)
        train = concatenate_training(splits)
        train_pixels = pixels_of(recipe, train, processor, "train")
        pixels = {
            name: {split: pixels_of(recipe, dataset[split], processor, f"{name} {split}")
                   for split in ("validation", "test")}
            for name, dataset in splits.items()
        }  # fmt: skip
        text_inputs.prepare([c for dataset in splits.values() for rows in dataset.values()
                             for captions in rows["captions"] for c in captions])  # fmt: skip
        pairs = caption_pairs(train, text_inputs)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    num_workers = resolve_num_workers(recipe.training.num_workers, accelerator.device, local_processes)
    weights, mix = training_mix(recipe, splits, pairs)
    return RunData(
        splits, pixels, train, train_pixels, pairs, weights, mix, num_workers, text_inputs, excluded
    )


def check_test_datasets(recipe: Recipe) -> None:
    """``evaluation.test_datasets`` must be seed-layout folders (checked when the run starts)."""
    for path in recipe.evaluation.test_datasets:
        if not Path(path).is_dir():
            raise RecipeError(f"evaluation.test_datasets: {path} is not a folder (expected <name>_precomp)")
        try:
            infer_name(Path(path))
        except RSITRDataError as error:
            raise RecipeError(f"evaluation.test_datasets: {error}") from None


def other_test_splits(recipe: Recipe, processor) -> dict[str, tuple[datasets.Dataset, PixelSource]]:
    """``{name: (rows, pixels)}``: the test split of each of ``evaluation.test_datasets`` (seed-layout
    folders) and its pixels, loaded as the run's own data is."""
    found = {}
    for path in recipe.evaluation.test_datasets:
        name = infer_name(Path(path))
        source = DatasetSource(path, "seed", None, 0.0, 0, recipe.data.empty_captions)
        rows = load_source(source)["test"]
        found[name] = rows, pixels_of(recipe, rows, processor, name)
    return found


def training_loader(recipe: Recipe, data: RunData, device: torch.device) -> DataLoader:
    """Shuffled batches of caption pairs with their images as uint8 pixels (see ``RetrievalCollator``); with
    datasets of different ``weight``, an epoch is as many pairs drawn by weight, with replacement."""
    sampler = None
    if data.pair_weights is not None:
        sampler = EpochWeightedSampler(data.pair_weights, len(data.pairs), seed=recipe.training.seed)
    return DataLoader(
        data.pairs,
        batch_size=recipe.training.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=RetrievalCollator(data.train_pixels, data.text_inputs),
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
