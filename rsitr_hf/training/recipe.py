"""Training recipes: YAML files in ``hub_configs/`` parsed into dataclasses, with strict keys.

A recipe has the sections below; every field has a default and a ``--help`` text, so a recipe names only
what differs. Unknown keys are an error naming the key path (``training.bach_size``). Any field can be
overridden on the command line as ``--section.field value``: argparse parses the value once, as YAML
(``--training.epochs 3``, ``--method.config '{bottleneck_dim: 32}'``; a bare boolean flag means true), and
it goes straight into the recipe's mapping before the recipe is built; transformers' spellings in
``ALIASES`` (``--push_to_hub --hub_model_id user/name``) are the same options. Recipes are read with YAML
1.2's booleans (``true``/``false`` only), so ``no`` is the word, as in ``mixed_precision: no``.

Fields with a fixed set of values are ``Literal`` types; ``method.name`` takes the names of the method table
(:mod:`rsitr_hf.tuners.methods`), whose spec also gives the default ``loss.name`` and checks
``method.config``.

Why not ``transformers.HfArgumentParser``: it flattens dataclasses into one namespace, where the four
``name`` fields of method, loss, optimizer and schedule would collide, and it has no nested sections
(``method.config`` is a mapping), no key-path errors and no YAML values. The recipe's own parser gives
the same ``--help`` (every field, its type, default and help) from the same dataclass metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..evaluation.classification import DEFAULT_TEMPLATES
from ..tuners.methods import get_method, method_summaries
from ..utils.deprecation import REMOVED_IN
from ..utils.errors import InputError


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: ``low``/``high`` bounds (``None``: unbounded), each inclusive
    unless ``*_open``. A list field's range applies to each item."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return (
            f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        )


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)


def option(
    default=dataclasses.MISSING,
    help_text: str = "",
    valid: Range | None = None,
    choices: Callable[[], Mapping[str, str]] | None = None,
    **kwargs,
):
    """A recipe field with its ``--help`` text in ``metadata["help"]`` (as transformers' dataclasses), the
    range of values it accepts in ``metadata["range"]``, and for a string whose values are registered at run
    time, ``metadata["choices"]``: a function giving them (``{value: what it is}``)."""
    return field(default=default, metadata={"help": help_text, "range": valid, "choices": choices}, **kwargs)


@dataclass
class MethodRecipe:
    """The PEFT method and its config."""

    name: str = option("mrs_adapter", "the method, from the method table", choices=method_summaries)
    config: dict = option(
        help_text="keyword arguments of the method's PEFT config (MRSAdapterConfig, POSPromptConfig, "
        "peft.LoraConfig, BottleneckAdapterConfig ...), e.g. '{bottleneck_dim: 32}'",
        default_factory=dict,
    )


@dataclass
class LossRecipe:
    """The training loss."""

    name: Literal["hmmc", "posapl", "harma"] | None = option(
        None,
        "hmmc (PE-RSITR) | posapl (multi-positive InfoNCE + power-scaled triplet) | harma (multi-positive "
        "ITC with the adapter's temperature + weighted triplet, over every process's batch); unset: the "
        "method's default",
    )
    margin: float = option(0.2, "hinge margin (HMMC 0.2, POSAPL 0.1, HarMA 0.2)", valid=NON_NEGATIVE)
    max_violation: bool = option(True, "HMMC: hardest negative only (false: sum over negatives)")
    mask_same_image: bool = option(
        True, "pairs of the same image are never negatives (false: the releases' behaviour)"
    )
    power: float = option(
        2.0,
        "POSAPL: exponent of the triplet hinge; HarMA: exponent of its weight (1 - exp(-c))",
        valid=POSITIVE,
    )
    exponentiate_scale: bool = option(
        True, "POSAPL: InfoNCE scale exp(logit_scale) as in CLIP (false: the release's raw logit_scale)"
    )


FORMATS = "seed (a <name>_precomp folder) | imagefolder | hub (a dataset id)"
EMPTY_CAPTIONS = "error | drop | keep"


@dataclass
class DatasetSource:
    """One dataset of a recipe that trains on several (an item of ``data.datasets``). A field left unset
    takes the ``data`` section's value."""

    path: str = option("", "a <name>_precomp folder, an image folder or a Hub dataset id")
    format: Literal["seed", "imagefolder", "hub"] | None = option(None, FORMATS)
    name: str | None = option(None, "dataset name (default: inferred from the folder)")
    validation_fraction: float | None = option(
        None, "fraction of train carved out for validation when the data has no validation split", FRACTION
    )
    split_seed: int | None = option(None, "seed of the validation carve", valid=NON_NEGATIVE)
    empty_captions: Literal["error", "drop", "keep"] | None = option(None, EMPTY_CAPTIONS)
    weight: float = option(
        1.0,
        "how often each of its caption pairs is drawn, relative to the other datasets' (1 everywhere: the "
        "shuffled concatenation; 2: this dataset's pairs twice as often, drawn with replacement)",
        valid=POSITIVE,
    )


@dataclass
class DataRecipe:
    """The dataset (or datasets), the validation carve, augmentation, caching and (POSAPL) POS tagging."""

    format: Literal["seed", "imagefolder", "hub"] = option("seed", FORMATS)
    path: str = option("", "that folder or Hub dataset id (one dataset; several: data.datasets)")
    name: str | None = option(None, "dataset name (default: inferred from the folder)")
    datasets: list[DatasetSource] = option(
        help_text="several datasets trained on together, instead of data.path: a list of {path, format, "
        "name, validation_fraction, split_seed, empty_captions, weight} (unset fields: this section's); "
        "their training splits are concatenated, validation and test are scored per dataset and averaged",
        default_factory=list,
    )
    validation_fraction: float = option(
        0.2, "fraction of train carved out for validation when the data has no validation split", FRACTION
    )
    split_seed: int = option(0, "seed of the validation carve", valid=NON_NEGATIVE)
    empty_captions: Literal["error", "drop", "keep"] = option("error", EMPTY_CAPTIONS)
    exclude_test_duplicates: bool | str = option(
        False,
        "drop from train and validation every image that an audit links to a test split the run scores "
        "(its datasets' and evaluation.test_datasets'): true (audit those seed-layout datasets now: exact "
        "and perceptual, as rsitr-audit) or the path of rsitr-audit's audit.json; the run lists what it "
        "dropped in excluded_training_images.json",
    )
    augment: bool = option(
        False, "random resized crop (area 0.5-1, aspect 3/4-4/3) + horizontal flip, on the device"
    )
    randaugment: list[int] | None = option(
        None,
        "[num_ops, magnitude]: RandAugment after the crop and flip, on the device, drawn per example "
        "(HarMA, POSAPL: [2, 7])",
        NON_NEGATIVE,
    )
    randaugment_kind: Literal["release", "torchvision"] = option(
        "release",
        "release (the HarMA and POSAPL releases' RandomAugment: 10 operations drawn with replacement, each "
        "applied with probability 0.5, magnitude out of 10, grey fill) | torchvision (torchvision's "
        "RandAugment: 14 operations, magnitude out of 30, black fill)",
    )
    image_preprocessing: Literal["processor", "paper"] = option(
        "processor",
        "processor (the base model's image processor: shorter side resized, centre crop) | paper (plain "
        "bicubic resize to the input size, no crop: the HarMA and POSAPL releases' transform)",
    )
    cache_images: bool = option(
        True,
        "decode and resize every image once into a memory-mapped Arrow cache reused by later epochs and "
        "runs (false: decode in the data-loader workers every epoch)",
    )
    image_cache: str | None = option(None, "image cache folder (default $RSITR_CACHE/images)")
    pos_model: str | None = option(
        None, "POSAPL: stanza tagger .pt (default $RSITR_POS_MODEL or stanza's English model)"
    )
    stanza_dir: str | None = option(None, "POSAPL: stanza resources (default $RSITR_STANZA_DIR)")
    pos_cache: str | None = option(
        None, "POSAPL: where the tagged dataset is saved and reused (default $RSITR_CACHE/pos)"
    )
    caption_normalisation: Literal["paper", "words"] = option(
        "paper",
        "POSAPL: paper (the release's: punctuation deleted, '-' and '/' as spaces, 'it's' -> 'its') | words "
        "(every non-alphanumeric character a space, rsitr_hf 0.1's)",
    )


def dataset_sources(data: DataRecipe) -> list[DatasetSource]:
    """The recipe's datasets with every field set: ``data.datasets`` (unset fields from ``data``), or the one
    dataset of ``data.path``. Raises :class:`RecipeError` when there is none or both are given."""
    if data.path and data.datasets:
        raise RecipeError("data.datasets: give data.path (one dataset) or data.datasets (several), not both")
    if not data.path and not data.datasets:
        raise RecipeError("data.path: give the dataset folder or Hub dataset id (or data.datasets)")
    if not data.datasets:
        fields = (data.format, data.name, data.validation_fraction, data.split_seed, data.empty_captions)
        return [DatasetSource(data.path, *fields)]
    if data.name:
        raise RecipeError("data.name: names the one dataset of data.path; with data.datasets, name each item")
    sources = []
    for index, source in enumerate(data.datasets):
        if not source.path:
            raise RecipeError(f"data.datasets[{index}].path: give the dataset folder or Hub dataset id")
        inherited = {
            key: getattr(data, key)
            for key in ("format", "validation_fraction", "split_seed", "empty_captions")
            if getattr(source, key) is None
        }
        sources.append(dataclasses.replace(source, **inherited))
    return sources


@dataclass
class OptimizerRecipe:
    """The optimiser."""

    name: Literal["adam", "adamw"] = option("adam", "adam | adamw")
    lr: float = option(2e-4, "learning rate", valid=POSITIVE)
    weight_decay: float = option(0.0, "weight decay", valid=NON_NEGATIVE)
    betas: list[float] = option(help_text="Adam betas", valid=FRACTION, default_factory=lambda: [0.9, 0.999])
    decay_biases: bool = option(
        True, "weight decay on every trainable parameter (false: none on those named bias, HarMA's release)"
    )


@dataclass
class ScheduleRecipe:
    """The learning-rate schedule."""

    name: Literal["step", "cosine", "linear", "constant"] = option(
        "step",
        "step (times gamma every step_epochs epochs) | cosine (per step) | linear (per step, down to 0 at "
        "the end) | constant",
    )
    warmup_fraction: float = option(
        0.0, "cosine and linear: share of the steps warming up linearly from 0 (HarMA: 0.1)", valid=FRACTION
    )
    step_epochs: int = option(20, "step: epochs between decays", valid=AT_LEAST_ONE)
    gamma: float = option(0.7, "step: decay factor", valid=POSITIVE)


@dataclass
class TrainingRecipe:
    """The loop. The optimiser sees ``batch_size * gradient_accumulation_steps * num_processes`` pairs per
    step. ``mixed_precision`` and ``compile``, when set here, win over the launcher; left unset (``null``)
    ``accelerate launch --mixed_precision bf16 --dynamo_backend inductor`` or the accelerate config file
    decide, and without a launcher they are off. A half-precision ``base_dtype`` keeps the adapters in
    float32 (the PE-RSITR release ran CLIP in half precision this way); methods that train base weights
    (``full``, ``linear_probe``) need ``float32``."""

    epochs: int = option(
        30, "epochs (max_steps, when set, wins; 0: evaluate the start only)", valid=NON_NEGATIVE
    )
    batch_size: int = option(16, "pairs per process and micro-batch", valid=AT_LEAST_ONE)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step", valid=AT_LEAST_ONE)
    max_grad_norm: float | None = option(None, "clip gradients to this norm", valid=POSITIVE)
    mixed_precision: Literal["no", "bf16", "fp16"] | None = option(
        None, "no | bf16 | fp16 (unset: the launcher's)"
    )
    base_dtype: Literal["float32", "bfloat16", "float16"] = option(
        "float32", "dtype the frozen base is loaded in: float32 | bfloat16 | float16"
    )
    compile: bool | None = option(
        None, "torch.compile through Accelerate's inductor backend (unset: the launcher's)"
    )
    gradient_checkpointing: bool = option(
        False,
        "recompute each CLIP block in the backward pass: less activation memory, each forward run twice",
    )
    seed: int = option(0, "seed of initialisation, shuffling, dropout and augmentation", valid=NON_NEGATIVE)
    eval_every_steps: int | None = option(
        None, "validate every N optimiser steps (unset: each epoch)", valid=AT_LEAST_ONE
    )
    eval_batch_size: int = option(64, "batch size of evaluation", valid=AT_LEAST_ONE)
    checkpoint_every_steps: int | None = option(
        None, "write a resumable checkpoint every N steps (unset: each epoch)", AT_LEAST_ONE
    )
    checkpoints_total_limit: int | None = option(2, "resumable checkpoints kept", valid=AT_LEAST_ONE)
    num_workers: Literal["auto"] | int = option(
        "auto",
        "data-loader processes; auto: 0 on the CPU, else the CPUs per process - 1, at most 8",
        NON_NEGATIVE,
    )
    max_steps: int | None = option(
        None, "stop after this many optimiser steps (the schedule spans them)", valid=AT_LEAST_ONE
    )


@dataclass
class EvaluationRecipe:
    """How retrieval is scored (validation for selection, test at the end)."""

    ties: Literal["pessimistic", "optimistic", "reference"] = option(
        "pessimistic",
        "exact ties with the correct item: pessimistic (counted against the query) | optimistic (for it) | "
        "reference (the papers' code: numpy argsort, reversed); metrics.json has the test under all three",
    )
    test_every_validation: bool = option(
        False,
        "also score test at every validation, never for selection: metrics.json then records the last "
        "validation's test figures (test_last) and the best of them (test_selected_on_test, the HarMA "
        "release's protocol, labelled as such)",
    )
    test_datasets: list[str] = option(
        help_text="other seed-layout datasets (<name>_precomp folders) whose test split the selected adapter "
        "is scored on at the end, beside the run's own (cross-dataset transfer); metrics.json: "
        "test_by_dataset, with their mean",
        default_factory=list,
    )
    classification: list[str] = option(
        help_text="zero-shot scene classification after training: folders of class folders (AID, RESISC45, "
        "UCM-21, EuroSAT layouts), scored for the base and the adapted model; metrics.json records top-1, "
        "top-5 and the adapted model's retention of the base's top-1",
        default_factory=list,
    )
    classification_templates: list[str] = option(
        help_text="prompt templates of zero-shot classification, each with one {} for the class name",
        default_factory=lambda: list(DEFAULT_TEMPLATES),
    )
    classification_names: dict = option(
        help_text="class names by folder name, where the cleaned folder name will not do",
        default_factory=dict,
    )


@dataclass
class HubRecipe:
    """Pushing the adapter to the Hub."""

    push_to_hub: bool = option(False, "push the adapter and its card at the end")
    model_id: str | None = option(None, "the Hub repository, user/name")
    private: bool = option(False, "create the repository private")


@dataclass
class Recipe:
    """A whole training recipe (see module docstring)."""

    base_model: str = option("openai/clip-vit-base-patch32", "base CLIP: a folder or Hub id")
    output_dir: str = option("outputs/run", "where the run writes adapter, checkpoints and metrics")
    overwrite_output_dir: bool = option(
        False,
        "start a new run in an output_dir that holds a previous run, deleting its outputs (as transformers); "
        "without it such a run is refused unless resuming",
    )
    synthetic_task: str | None = option(
        None,
        f"deprecated (removed in {REMOVED_IN}): a folder where rsitr-demo prepared its task; sets "
        "base_model to DIR/base and data.path to DIR/data/target_precomp, which is what to write instead",
    )
    method: MethodRecipe = field(default_factory=MethodRecipe)
    loss: LossRecipe = field(default_factory=LossRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    optimizer: OptimizerRecipe = field(default_factory=OptimizerRecipe)
    schedule: ScheduleRecipe = field(default_factory=ScheduleRecipe)
    training: TrainingRecipe = field(default_factory=TrainingRecipe)
    evaluation: EvaluationRecipe = field(default_factory=EvaluationRecipe)
    hub: HubRecipe = field(default_factory=HubRecipe)

    def __post_init__(self):
        if self.synthetic_task is not None:
            use_synthetic_task(self)
        check_method(self)
        if self.data.datasets:
            dataset_sources(self.data)  # a path in each, and not beside data.path

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


ALIASES = {"push_to_hub": "hub.push_to_hub", "hub_model_id": "hub.model_id"}  # transformers' names


class RecipeError(InputError, ValueError):
    """A recipe key or value is not what the schema expects; the message names the key path."""


def use_synthetic_task(recipe: Recipe) -> None:
    """The deprecated ``synthetic_task: DIR``: ``base_model`` and ``data.path`` of the demo's task in ``DIR``
    (rsitr-demo's layout; preparing it is rsitr-demo's job, never the recipe's)."""
    folder = Path(recipe.synthetic_task)
    warnings.warn(
        f"synthetic_task is deprecated and removed in rsitr_hf {REMOVED_IN}: set base_model: "
        f"{folder / 'base'} and data.path: {folder / 'data' / 'target_precomp'} (rsitr-demo --prepare_only "
        "prepares them)",
        FutureWarning,
        stacklevel=2,
    )
    recipe.base_model = str(folder / "base")
    recipe.data.format, recipe.data.path = "seed", str(folder / "data" / "target_precomp")
    recipe.synthetic_task = None


def check_method(recipe: Recipe) -> None:
    """``method.config`` against the method's PEFT config, and ``loss.name`` against the losses it trains with
    (unset: its default), as the method table declares them."""
    method = get_method(recipe.method.name)
    if method.is_peft:
        try:
            method.make_config(**recipe.method.config)
        except (TypeError, ValueError) as error:  # an unknown field, or a value the config rejects
            raise RecipeError(f"method.config: {error}") from None
    elif recipe.method.config:
        raise RecipeError(f"method.config: {method.name} takes no options")
    if recipe.loss.name is None:
        recipe.loss.name = method.losses[0]
    elif recipe.loss.name not in method.losses:
        raise RecipeError(
            f"loss.name: {method.name} ({method.summary}) trains with {' or '.join(method.losses)}, not "
            f"{recipe.loss.name}"
        )


def coerce(value, annotation, path: str):
    """Check ``value`` against a field annotation (``int``, ``float | None``, ``list[float]``, ``dict``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(value, option, path)
            except RecipeError as error:
                errors.append(str(error))
        raise RecipeError(errors[0])
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise RecipeError(f"{path}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, f"{path}.")
    if annotation is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{path}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise RecipeError(f"{path}: expected a string, got {value!r}")
        return value
    raise RecipeError(f"{path}: unsupported field type {annotation}")


def check_choice(value, choices: Callable[[], Mapping[str, str]] | None, path: str) -> None:
    """A :class:`RecipeError` naming ``path`` when ``value`` is not one of the registered ``choices``."""
    if choices is not None and value not in choices():
        raise RecipeError(f"{path}: expected one of {list(choices())}, got {value!r}")


def check_range(value, valid: Range | None, path: str) -> None:
    """A :class:`RecipeError` naming ``path`` when a number (or an item of a list) is outside ``valid``."""
    if valid is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, int | float) and not isinstance(item, bool) and item not in valid:
            raise RecipeError(f"{path}: expected a value {valid}, got {item!r}")


def build(cls, values: dict, prefix: str = ""):
    """Instantiate dataclass ``cls`` from a mapping, recursing into dataclass fields; strict keys."""
    if not isinstance(values, dict):
        raise RecipeError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RecipeError(
            f"unknown key {prefix}{unknown[0]!s} (known keys of {prefix.rstrip('.') or 'the recipe'}: "
            f"{', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in values.items():
        path = f"{prefix}{name}"
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = build(hints[name], value, f"{path}.")
        else:
            kwargs[name] = coerce(value, hints[name], path)
            check_range(kwargs[name], fields[name].metadata.get("range"), path)
            check_choice(kwargs[name], fields[name].metadata.get("choices"), path)
    return cls(**kwargs)


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: ``true``/``false`` only, so ``no``, ``on`` and ``yes``
    are words (YAML 1.1 reads an unquoted ``no`` as false, which ``mixed_precision: no`` means as a word)."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str):
    """A recipe's YAML text (a file, or one command-line value) as Python values."""
    return yaml.load(text, Loader=RecipeLoader)


def set_value(values: dict, dotted: str, value) -> None:
    """``values[a][b] = value`` for ``dotted = "a.b"`` (sections created as needed)."""
    keys = dotted.split(".")
    target = values
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise RecipeError(f"cannot override {dotted}: {key} is not a section")
    target[keys[-1]] = value


def add_recipe_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> list[str]:
    """Add one ``--section.field`` option per recipe field (a group per section, with the field's help,
    type, default and choices) and the ``ALIASES``; returns their destinations for :func:`recipe_overrides`.

    Options default to "not given", so only what the command line names overrides the recipe file. Each
    value is parsed once, as YAML (:func:`read_yaml`); the recipe checks it when it is built."""
    destinations = []

    def add(group, path: str, annotation, recipe_field: dataclasses.Field, *flags: str) -> None:
        default = recipe_field.default
        if default is dataclasses.MISSING:
            default = recipe_field.default_factory()
        help_text = recipe_field.metadata.get("help", "")
        choices = recipe_field.metadata.get("choices")
        if choices is not None:
            help_text += ": " + " | ".join(f"{value} ({what})" for value, what in choices().items())
        if recipe_field.metadata.get("range") is not None:
            help_text += f"; {recipe_field.metadata['range']}"
        if default is not None and "default" not in help_text:
            help_text += f" (default: {default!r})"
        boolean = annotation is bool or annotation == (bool | None)
        group.add_argument(
            f"--{path}",
            *flags,
            dest=path,
            default=argparse.SUPPRESS,
            metavar=type_name(annotation),
            type=read_yaml,
            nargs="?" if boolean else None,
            const=True if boolean else None,
            help=help_text.replace("%", "%%"),
        )
        destinations.append(path)

    hints = typing.get_type_hints(Recipe)
    top_level = parser.add_argument_group("recipe (each overrides the --config file)")
    aliases = {target: alias for alias, target in ALIASES.items()}
    for recipe_field in dataclasses.fields(Recipe):
        section = hints[recipe_field.name]
        if not dataclasses.is_dataclass(section):
            if recipe_field.name not in exclude:
                add(top_level, recipe_field.name, section, recipe_field)
            continue
        title = section.__doc__.split("\n")[0].rstrip(".")
        group = parser.add_argument_group(
            f"recipe section {recipe_field.name} ({title[0].lower()}{title[1:]})"
        )
        section_hints = typing.get_type_hints(section)
        for inner in dataclasses.fields(section):
            path = f"{recipe_field.name}.{inner.name}"
            if path not in exclude:
                alias = [f"--{aliases[path]}"] if path in aliases else []
                add(group, path, section_hints[inner.name], inner, *alias)
    return destinations


def type_name(annotation) -> str:
    """``int | None`` -> ``INT``, ``list[float]`` -> ``LIST``, ``Literal["a", "b"]`` -> ``a|b``: the metavar
    of a recipe option."""
    options = [option for option in typing.get_args(annotation) if option is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return "|".join(type_name(option) for option in options)
    if typing.get_origin(annotation) is Literal:
        return "|".join(map(str, options))
    return getattr(typing.get_origin(annotation) or annotation, "__name__", str(annotation)).upper()


def recipe_overrides(arguments: argparse.Namespace, destinations: list[str]) -> dict[str, Any]:
    """The recipe options given on the command line, ``{"section.field": value}``, for :func:`load_recipe`."""
    return {path: getattr(arguments, path) for path in destinations if hasattr(arguments, path)}


def read_mapping(path: str | os.PathLike) -> dict:
    """The YAML mapping in the file ``path`` (empty for an empty file)."""
    values = read_yaml(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: expected a YAML mapping")
    return values


def load_recipe(path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Read a YAML recipe (or the defaults when ``path`` is None), set the ``overrides``
    (``{"training.epochs": 3}``) and build it."""
    values = {} if path is None else read_mapping(path)
    try:
        for dotted, value in (overrides or {}).items():
            set_value(values, dotted, value)
        return build(Recipe, values)
    except RecipeError as error:
        raise RecipeError(f"{path or 'recipe'}: {error}") from None


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write ``recipe`` as YAML (every field; ``no`` quoted, so any YAML reader reads it back as the word)."""
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
