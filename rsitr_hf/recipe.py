"""Training recipes: YAML files in ``hub_configs/`` parsed into dataclasses, with strict keys.

A recipe has the sections below; every field has a default, so a recipe names only what differs.
Unknown keys are an error naming the key path (``training.bach_size``). Any field can be overridden on
the command line as ``--section.field value`` (values are parsed as YAML: ``--training.epochs 3``,
``--method.config '{bottleneck_dim: 32}'``), plus the aliases in ``ALIASES``
(``--push_to_hub --hub_model_id user/name --output_dir DIR``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class MethodRecipe:
    """The PEFT method. ``name``: ``mrs_adapter`` | ``pos_prompt`` (POSAPL) | ``lora`` |
    ``bottleneck_adapter`` (Houlsby-style) | ``linear_probe`` (the two projections only) | ``full`` (full
    fine-tuning); ``config``: keyword arguments of its config (``MRSAdapterConfig``, ``POSPromptConfig``,
    ``peft.LoraConfig``, ``BottleneckAdapterConfig``)."""

    name: str = "mrs_adapter"
    config: dict = field(default_factory=dict)


@dataclass
class LossRecipe:
    """``name``: ``hmmc`` (PE-RSITR) or ``posapl`` (multi-positive InfoNCE + power-scaled triplet).
    ``margin``: the hinge margin (HMMC 0.2, POSAPL 0.1); ``max_violation`` (HMMC): hardest negative only;
    ``mask_same_image``: pairs of the same image are never negatives (False: the releases' behaviour);
    ``power`` (POSAPL): exponent of the triplet hinge; ``exponentiate_scale`` (POSAPL): InfoNCE scale
    ``exp(logit_scale)`` as in CLIP, False for the release's raw ``logit_scale`` ("paper-faithful")."""

    name: str = "hmmc"
    margin: float = 0.2
    max_violation: bool = True
    mask_same_image: bool = True
    power: float = 2.0
    exponentiate_scale: bool = True


@dataclass
class DataRecipe:
    """``format``: ``seed`` (``<name>_precomp`` folder), ``imagefolder`` or ``hub`` (dataset id).
    ``path``: that folder or id. ``validation_fraction`` / ``split_seed``: the validation carve.
    ``empty_captions``: ``error`` | ``drop`` | ``keep``. ``augment``: random resized crop (area 0.5-1, aspect
    3/4-4/3) + horizontal flip, on the device. ``cache_images``: decode and resize every image once into a
    memory-mapped Arrow cache (in ``image_cache``; default ``$RSITR_CACHE/images`` =
    ``~/.cache/rsitr_hf/images``) reused by later epochs and runs; ``false`` decodes in the data-loader
    workers every epoch. POSAPL only: ``pos_model`` (a stanza tagger ``.pt``; default ``$RSITR_POS_MODEL``
    or stanza's English model), ``stanza_dir`` (resources; default ``$RSITR_STANZA_DIR``), ``pos_cache``
    (where the tagged dataset is saved and reused; default ``~/.cache/rsitr_hf/pos``)."""

    format: str = "seed"
    path: str = ""
    name: str | None = None
    validation_fraction: float = 0.2
    split_seed: int = 0
    empty_captions: str = "error"
    augment: bool = False
    cache_images: bool = True
    image_cache: str | None = None
    pos_model: str | None = None
    stanza_dir: str | None = None
    pos_cache: str | None = None


@dataclass
class OptimizerRecipe:
    """``name``: ``adam`` | ``adamw``."""

    name: str = "adam"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleRecipe:
    """``name``: ``step`` (multiply by ``gamma`` every ``step_epochs`` epochs), ``cosine`` (per step,
    no warm-up) or ``constant``."""

    name: str = "step"
    step_epochs: int = 20
    gamma: float = 0.7


@dataclass
class TrainingRecipe:
    """``batch_size`` is per process and per micro-batch; the optimiser sees
    ``batch_size * gradient_accumulation_steps * num_processes`` pairs per step.
    ``eval_every_steps``: validate every N optimiser steps (default: each epoch).
    ``checkpoint_every_steps``: write a resumable checkpoint every N steps (default: each epoch);
    ``checkpoints_total_limit`` keeps that many. ``max_steps``: stop after this many optimiser steps (the
    schedule then spans them), whatever ``epochs`` says.
    ``mixed_precision`` (``no`` | ``bf16`` | ``fp16``) and ``compile`` (``torch.compile`` through Accelerate's
    inductor backend): when set here they win; left unset (``null``) the launcher decides
    (``accelerate launch --mixed_precision bf16 --dynamo_backend inductor`` or the accelerate config file),
    and without a launcher they are off. ``base_dtype``: the dtype the frozen base model is loaded in
    (``float32`` | ``bfloat16`` | ``float16``); the adapters stay float32 and compute in float32 (the
    PE-RSITR release ran CLIP in half precision this way). A half-precision base needs no autocast casts
    of the frozen weights and activations; methods that train base weights (``full``, ``linear_probe``)
    need ``float32``. ``num_workers``: data-loader processes; ``auto`` is 0 when
    training on the CPU (the CPU is busy with the model), otherwise one less than the CPUs per process, at
    most 8."""

    epochs: int = 30
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    mixed_precision: str | None = None
    base_dtype: str = "float32"
    compile: bool | None = None
    seed: int = 0
    eval_every_steps: int | None = None
    eval_batch_size: int = 64
    checkpoint_every_steps: int | None = None
    checkpoints_total_limit: int | None = 2
    num_workers: int | str = "auto"
    max_steps: int | None = None


@dataclass
class HubRecipe:
    push_to_hub: bool = False
    model_id: str | None = None
    private: bool = False


@dataclass
class Recipe:
    """A whole training recipe (see module docstring)."""

    base_model: str = "openai/clip-vit-base-patch32"
    output_dir: str = "outputs/run"
    method: MethodRecipe = field(default_factory=MethodRecipe)
    loss: LossRecipe = field(default_factory=LossRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    optimizer: OptimizerRecipe = field(default_factory=OptimizerRecipe)
    schedule: ScheduleRecipe = field(default_factory=ScheduleRecipe)
    training: TrainingRecipe = field(default_factory=TrainingRecipe)
    hub: HubRecipe = field(default_factory=HubRecipe)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


ALIASES = {"push_to_hub": "hub.push_to_hub", "hub_model_id": "hub.model_id", "output_dir": "output_dir"}
CHOICES = {
    "method.name": ("mrs_adapter", "pos_prompt", "lora", "bottleneck_adapter", "linear_probe", "full"),
    "loss.name": ("hmmc", "posapl"),
    "data.format": ("seed", "imagefolder", "hub"),
    "data.empty_captions": ("error", "drop", "keep"),
    "optimizer.name": ("adam", "adamw"),
    "schedule.name": ("step", "cosine", "constant"),
    "training.mixed_precision": ("no", "bf16", "fp16"),
    "training.base_dtype": ("float32", "bfloat16", "float16"),
    "training.num_workers": ("auto",),  # or a number
}
NO_CHOICE = {"training.mixed_precision"}  # string fields whose choices include "no"


class RecipeError(ValueError):
    """A recipe key or value is not what the schema expects; the message names the key path."""


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
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
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
            if value is False and path in NO_CHOICE:  # YAML 1.1 reads an unquoted `no` as false
                value = "no"
            kwargs[name] = coerce(value, hints[name], path)
            if path in CHOICES and isinstance(kwargs[name], str) and kwargs[name] not in CHOICES[path]:
                raise RecipeError(f"{path}: expected one of {list(CHOICES[path])}, got {kwargs[name]!r}")
    return cls(**kwargs)


def apply_override(values: dict, dotted: str, raw: str | None) -> None:
    """Set ``values[a][b] = yaml(raw)`` for ``dotted = "a.b"``; ``raw=None`` means ``true``."""
    keys = ALIASES.get(dotted, dotted).split(".")
    target = values
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise RecipeError(f"cannot override {dotted}: {key} is not a section")
    target[keys[-1]] = True if raw is None else yaml.safe_load(raw)


def parse_overrides(arguments: list[str]) -> list[tuple[str, str | None]]:
    """``["--a.b", "1", "--flag"]`` -> ``[("a.b", "1"), ("flag", None)]``."""
    overrides, index = [], 0
    while index < len(arguments):
        argument = arguments[index]
        if not argument.startswith("--"):
            raise RecipeError(f"unexpected argument {argument!r}: overrides look like --section.field value")
        key, _, inline = argument[2:].partition("=")
        if inline:
            overrides.append((key, inline))
            index += 1
        elif index + 1 < len(arguments) and not arguments[index + 1].startswith("--"):
            overrides.append((key, arguments[index + 1]))
            index += 2
        else:
            overrides.append((key, None))
            index += 1
    return overrides


def load_recipe(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply command-line overrides."""
    values = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        values = yaml.safe_load(text) or {}
        if not isinstance(values, dict):
            raise RecipeError(f"{path}: a recipe is a YAML mapping")
    for key, raw in parse_overrides(overrides or []):
        apply_override(values, key, raw)
    try:
        return build(Recipe, values)
    except RecipeError as error:
        raise RecipeError(f"{path or 'recipe'}: {error}") from None


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
