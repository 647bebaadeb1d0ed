"""Training recipes: YAML files in ``hub_configs/`` read into the :class:`Recipe` dataclass, with strict keys
(by :mod:`rsitr_hf.utils.config`).

A recipe has the sections below; every field has a default and a ``--help`` text, so a recipe names only
what differs. Unknown keys are an error naming the key path (``training.bach_size``). Any field can be
overridden on the command line as ``--section.field value``: argparse parses the value once, as YAML
(``--training.epochs 3``, ``--method.config '{bottleneck_dim: 32}'``; a bare boolean flag means true), and
it goes straight into the recipe's mapping before the recipe is built; transformers' spellings in
``ALIASES`` (``--push_to_hub --hub_model_id user/name``) are the same options. Recipes are read with YAML
1.2's booleans (``true``/``false`` only), so ``no`` is the word, as in ``mixed_precision: no``.

``method.name`` takes the names of the method table (:mod:`rsitr_hf.tuners.methods`), whose spec checks
``method.config`` and names the losses the method trains with (the first is the default ``loss.name``);
``loss.name`` takes the names of the loss table (:mod:`rsitr_hf.objectives.table`), and the rest of the
``loss`` section is that loss's options, as the loss declares them; the ``text`` section holds the options of
the method's kind of text inputs (:mod:`rsitr_hf.data.text_inputs`; POSAPL's tagger, for one).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from ..data.text_inputs import get_text_inputs, text_input_options
from ..evaluation.classification import DEFAULT_TEMPLATES
from ..objectives.table import get_loss, loss_options, loss_summaries
from ..tuners.methods import get_method, method_summaries
from ..utils.config import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    RecipeError,
    add_arguments,
    build,
    given_values,
    option,
    read_mapping,
    set_value,
    to_mapping,
)
from ..utils.files import write_text


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
class TextRecipe:
    """How captions become the method's text inputs: the options its kind of text inputs declares."""

    options: Any = option(
        help_text="the text inputs' options, written flat in this section", default_factory=dict,
        declared_by=text_input_options,
    )  # fmt: skip


@dataclass
class LossRecipe:
    """The training loss: its name and the options it declares in the loss table."""

    name: str | None = option(
        None, "the loss, from the loss table (unset: the method's default)", choices=loss_summaries
    )
    options: Any = option(
        help_text="the loss's options, written flat in this section", default_factory=dict,
        declared_by=loss_options,
    )  # fmt: skip


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
    """The dataset (or datasets), the validation carve, augmentation and caching."""

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
        "drop from train and validation every image that an audit's verified pairs link to a test split "
        "the run scores (its datasets' and evaluation.test_datasets'): true (audit those seed-layout "
        "datasets now with rsitr-audit's defaults; needs the audit extra) or the path of rsitr-audit's "
        "audit.json; the run lists what it dropped in excluded_training_images.json",
    )
    exclude_unverified_candidates: bool = option(
        False, "exclude_test_duplicates also drops images linked by candidate pairs that were not verified"
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
    method: MethodRecipe = field(default_factory=MethodRecipe)
    text: TextRecipe = field(default_factory=TextRecipe)
    loss: LossRecipe = field(default_factory=LossRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    optimizer: OptimizerRecipe = field(default_factory=OptimizerRecipe)
    schedule: ScheduleRecipe = field(default_factory=ScheduleRecipe)
    training: TrainingRecipe = field(default_factory=TrainingRecipe)
    evaluation: EvaluationRecipe = field(default_factory=EvaluationRecipe)
    hub: HubRecipe = field(default_factory=HubRecipe)

    def __post_init__(self):
        check_method(self)
        if self.data.datasets:
            dataset_sources(self.data)  # a path in each, and not beside data.path

    def to_dict(self) -> dict:
        """The recipe as the mapping a recipe file holds."""
        return to_mapping(self)


ALIASES = {"push_to_hub": "hub.push_to_hub", "hub_model_id": "hub.model_id"}  # transformers' names


def check_method(recipe: Recipe) -> None:
    """``method.config`` against the method's PEFT config, ``loss.name`` against the losses it trains with
    (unset: its default), the ``loss`` section's options against the loss's and the ``text`` section's against
    those of the method's text inputs, as the tables declare them."""
    method = get_method(recipe.method.name)
    if method.is_peft:
        try:
            method.make_config(**recipe.method.config)
        except (TypeError, ValueError) as error:  # an unknown field, or a value the config rejects
            raise RecipeError(f"method.config: {error}") from None
    elif recipe.method.config:
        raise RecipeError(f"method.config: {method.name} takes no options")
    name = recipe.loss.name or method.losses[0]
    if name not in method.losses:
        raise RecipeError(
            f"loss.name: {method.name} ({method.summary}) trains with {' or '.join(method.losses)}, not "
            f"{name}"
        )
    try:
        loss = get_loss(name)
    except ValueError as error:  # a method naming a loss that nothing registered
        raise RecipeError(f"loss.name: {error}") from None
    recipe.loss.name = name
    if not isinstance(recipe.loss.options, loss.options):
        recipe.loss.options = loss.make_options(recipe.loss.options)
    try:
        text_inputs = get_text_inputs(method.text_inputs)
    except ValueError as error:  # a method naming text inputs that nothing registered
        raise RecipeError(f"method.name: {error}") from None
    if not isinstance(recipe.text.options, text_inputs.Options):
        recipe.text.options = build(text_inputs.Options, recipe.text.options, "text.", owner=text_inputs.name)


def add_recipe_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> list[str]:
    """Add one ``--section.field`` option per recipe field (``loss.*``: every option of every loss) and the
    ``ALIASES``; returns their destinations for :func:`recipe_overrides`."""
    return add_arguments(parser, Recipe, exclude, ALIASES)


def recipe_overrides(arguments: argparse.Namespace, destinations: list[str]) -> dict[str, Any]:
    """The recipe options given on the command line, ``{"section.field": value}``, for :func:`load_recipe`."""
    return given_values(arguments, destinations)


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
    write_text(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
