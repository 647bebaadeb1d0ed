"""Set-up of a training run: the accelerator, the model (the recipe's method applied as the method table
declares it), the optimiser and the learning-rate schedule, and what the run really uses."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DynamoBackend,
    ProjectConfiguration,
    is_tensorboard_available,
)
from peft import PeftModel, get_peft_model
from transformers import CLIPModel, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from ..tuners.methods import MethodSpec
from ..utils.distributed import has_accelerator
from ..utils.errors import first_line
from .recipe import Recipe, RecipeError


def create_accelerator(recipe: Recipe) -> Accelerator:
    """The run's ``Accelerator``. ``training.mixed_precision`` and ``training.compile`` are passed only when
    the recipe sets them; otherwise Accelerate reads what ``accelerate launch`` (its flags or config file)
    put in the environment, and defaults to no mixed precision and no compilation."""
    training = recipe.training
    output_dir = Path(recipe.output_dir)
    dynamo_backend = None if training.compile is None else ("inductor" if training.compile else "no")
    on_accelerator = has_accelerator()
    return Accelerator(
        # without cpu=True, a GPU-less `accelerate launch --multi_gpu` runs unsynchronised copies
        cpu=not on_accelerator,
        mixed_precision=training.mixed_precision,
        dynamo_backend=dynamo_backend,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        log_with="tensorboard" if is_tensorboard_available() else None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=training.seed, non_blocking=on_accelerator
        ),
    )


def run_settings(recipe: Recipe, accelerator: Accelerator, num_workers: int) -> dict:
    """What the run really uses (recorded in ``metrics.json`` under ``cost``), and where each came from."""
    training = recipe.training

    def source(recipe_value, launcher_variable: str) -> str:
        if recipe_value is not None:
            return "recipe"
        return "accelerate launch/config" if launcher_variable in os.environ else "default"

    return {
        "base_dtype": training.base_dtype,
        "mixed_precision": accelerator.mixed_precision,
        "mixed_precision_from": source(training.mixed_precision, "ACCELERATE_MIXED_PRECISION"),
        "compiled": accelerator.state.dynamo_plugin.backend != DynamoBackend.NO,
        "compile_from": source(training.compile, "ACCELERATE_DYNAMO_BACKEND"),
        "gradient_checkpointing": training.gradient_checkpointing,
        "num_workers": num_workers,
        "image_cache": recipe.data.cache_images,
    }


def check_base_model(name: str) -> None:
    """A one-line :class:`RecipeError` unless ``name`` is an existing folder or a Hub id that can be had:
    in the local Hub cache, or with the network allowed (whether it exists is then the Hub's answer)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_OFFLINE
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(name).is_dir():
        return
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise RecipeError(
            f"base_model: there is no folder {name} and it is not a Hub id (user/name); for the offline "
            "demo's base, run rsitr-demo (or rsitr-demo --prepare_only) first"
        ) from None
    if HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise RecipeError(
            f"base_model: {name} is not a folder here and not in the local Hub cache, and HF_HUB_OFFLINE is "
            "set: download it once with the network, or give a local folder"
        )


def load_base_model(recipe: Recipe) -> CLIPModel:
    """The recipe's base CLIP in ``training.base_dtype``."""
    try:
        return CLIPModel.from_pretrained(recipe.base_model, dtype=getattr(torch, recipe.training.base_dtype))
    except OSError as error:  # not on the Hub, no access, no network
        raise RecipeError(
            f"base_model: {recipe.base_model} could not be loaded: {first_line(error)}"
        ) from None


def build_model(recipe: Recipe, method: MethodSpec) -> torch.nn.Module:
    """The base CLIP (in ``training.base_dtype``) with ``method`` applied: a ``PeftModel`` of its PEFT config,
    or the bare model with only its ``trainable_base`` modules trainable; with
    ``training.gradient_checkpointing``, every block recomputes its activations in the backward pass."""
    base_dtype = recipe.training.base_dtype
    if base_dtype != "float32" and method.trains_base_weights:
        raise RecipeError(
            f"training.base_dtype: {method.name} ({method.summary}) trains base weights, which need float32; "
            "use float32"
        )
    config = method.make_config(**recipe.method.config) if method.is_peft else None
    if base_dtype != "float32" and getattr(config, "modules_to_save", None):
        raise RecipeError(
            f"training.base_dtype: method.config.modules_to_save {config.modules_to_save} trains copies of "
            "base-model modules, which need float32; use float32"
        )
    base = load_base_model(recipe)
    if config is not None:
        config.base_model_name_or_path = recipe.base_model
        model = get_peft_model(base, config)
    else:
        model = method.select_trainable(base)
    if recipe.training.gradient_checkpointing:
        enable = (
            getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        )
        enable()  # transformers >= 5.x renamed it; non-reentrant either way
    return model


def method_config(model: torch.nn.Module):
    """The PEFT config of a ``PeftModel`` (``None`` for a bare model)."""
    return model.peft_config["default"] if isinstance(model, PeftModel) else None


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, base)``: parameters being trained, and parameters of the base CLIP (a PEFT tuner's
    own parameters, trainable or not, are not part of the base)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not isinstance(model, PeftModel):
        return trainable, sum(p.numel() for p in model.parameters())
    prefix = model.base_model.prefix
    base = sum(p.numel() for name, p in model.get_base_model().named_parameters() if prefix not in name)
    return trainable, base


def build_optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters; with ``optimizer.decay_biases: false``, the parameters
    named ``bias`` (``in_proj_bias`` included) form a second group without weight decay."""
    options = recipe.optimizer
    trainable = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    undecayed = [parameter for name, parameter in trainable if not options.decay_biases and "bias" in name]
    decayed = [parameter for name, parameter in trainable if options.decay_biases or "bias" not in name]
    groups = [{"params": decayed}] + ([{"params": undecayed, "weight_decay": 0.0}] if undecayed else [])
    optimizer_class = torch.optim.AdamW if options.name == "adamw" else torch.optim.Adam
    return optimizer_class(
        groups, lr=options.lr, betas=tuple(options.betas), weight_decay=options.weight_decay
    )


def total_steps_of(recipe: Recipe, steps_per_epoch: int) -> int:
    """Optimiser steps of the whole run: ``epochs`` epochs, or ``max_steps`` when set."""
    if recipe.training.max_steps is not None:
        return recipe.training.max_steps
    return steps_per_epoch * recipe.training.epochs


def build_scheduler(
    recipe: Recipe, optimizer, steps_per_epoch: int, total_steps: int, num_processes: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule, to be prepared by Accelerate. A prepared scheduler steps once per process
    at each optimiser step (Accelerate's convention, as in its examples), so the schedule counts
    ``num_processes`` steps per optimiser step."""
    schedule = recipe.schedule
    if schedule.name in ("cosine", "linear"):
        warmup = int(schedule.warmup_fraction * total_steps)  # the HarMA release's int(0.1 * T)
        build = (
            get_cosine_schedule_with_warmup if schedule.name == "cosine" else get_linear_schedule_with_warmup
        )
        return build(optimizer, warmup * num_processes, max(total_steps, 1) * num_processes)
    if schedule.name == "step":
        steps_per_decay = steps_per_epoch * schedule.step_epochs * num_processes
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: schedule.gamma ** (step // steps_per_decay)
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
