"""Train an adapter on an RSITR benchmark with Accelerate.

    accelerate launch train_accelerate.py --config hub_configs/<recipe>.yaml [--section.field value ...]
        [--resume_from_checkpoint latest|DIR] [--push_to_hub --hub_model_id user/name]

Every recipe field is an option (listed below with its default); a value given here wins over the file.

The loop: build base model + processor, apply the PEFT config, load the data (images decoded and resized
once into a cache, batches moved to the device as uint8 and normalised/augmented there), train with
gradient accumulation / mixed precision / optional clipping and ``torch.compile``, validate each epoch (or
every N steps) keeping the best adapter by validation mR, and evaluate that adapter once on test. Writes to
``output_dir``: ``adapter/`` (best adapter + processor), ``metrics.json`` (every evaluation with step and
epoch, the training loss, the test result, and the cost: trainable parameters, wall time per step, peak
memory, the precision, compilation and data workers really used), ``training_curve.png``, ``recall.png``,
``retrieval_examples.png`` (top-5 images of a few validation queries), ``recipe.yaml`` and resumable
adapter-only checkpoints in ``checkpoints/``.

Mixed precision and compilation: a value set in the recipe (``training.mixed_precision``,
``training.compile``) wins; left unset, ``accelerate launch``'s flags or its config file decide.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DynamoBackend, ProjectConfiguration, set_seed
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPProcessor, get_cosine_schedule_with_warmup

from .baselines import lora_baseline_config
from .checkpoints import (
    TRAINER_STATE,
    claim_output_dir,
    latest_checkpoint,
    new_run_id,
    partial_folder,
    prune_checkpoints,
    read_json,
    replace_folder,
    seal_checkpoint,
    verify_checkpoint,
)
from .cli import command, command_parser, parse_arguments, report_error
from .data import load_rsitr, load_rsitr_hub
from .data.augmentation import RandomResizedCropFlip
from .data.pixels import DecodedPixels, PixelNormalizer, PixelSource, cached_pixels
from .data.pos import cached_pos_dataset, pos_text_inputs
from .data.preprocessing import ImageBatchTransform, RetrievalCollator, caption_pairs
from .data.randaugment import RandAugment
from .distributed import has_accelerator
from .errors import first_line
from .evaluation import TIE_PROTOCOLS, evaluate_by_ties, test_results
from .files import write_json
from .hub import HubPushError, push_adapter
from .losses import hmmc_loss, posapl_loss
from .recipe import (
    LossRecipe,
    Recipe,
    RecipeError,
    add_recipe_arguments,
    load_recipe,
    recipe_overrides,
    save_recipe,
)
from .tuners import BottleneckAdapterConfig, MRSAdapterConfig, POSPromptConfig
from .views import encode_views, unwrap_clip
from .visualize import plot_retrieval_grid, split_examples

DEFAULT_TOKEN_DROPOUT = 0.2
LOSS_READ_EVERY = 10  # optimiser steps between reads of the loss from the device (each read synchronises)
MAX_AUTO_WORKERS = 8

logger = get_logger(__spec__.name if __spec__ else __name__)  # rsitr_hf.train under `python -m` too


@dataclass
class TrainerState:
    """Progress saved in every checkpoint so that a resumed run continues exactly where it stopped."""

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    best_mR: float | None = None  # None without a validation split (the latest adapter is kept)
    best_step: int = -1
    evaluations: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainResult:
    output_dir: Path
    test_metrics: dict
    best_step: int
    best_validation_mR: float | None
    cost: dict = field(default_factory=dict)
    pushed_to: str | None = None


LINEAR_PROBE_MODULES = ("visual_projection", "text_projection")
HALF_BASE_REFUSED = {
    "full": "full fine-tuning trains the base weights, which need float32",
    "linear_probe": "the linear probe trains base weights (the projections), which need float32",
}


# --- Set-up: the accelerator, the model and what the run really uses -------------------------------


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
        log_with="tensorboard" if _tensorboard_installed() else None,
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


def build_model(recipe: Recipe) -> torch.nn.Module:
    """The base CLIP (in ``training.base_dtype``) with the recipe's method applied: a PeftModel, or the bare
    model for ``full`` and ``linear_probe`` (everything frozen but ``LINEAR_PROBE_MODULES``); with
    ``training.gradient_checkpointing``, every block recomputes its activations in the backward pass."""
    model = apply_method(recipe)
    if recipe.training.gradient_checkpointing:
        enable = (
            getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        )
        enable()  # transformers >= 5.x renamed it; non-reentrant either way
    return model


def apply_method(recipe: Recipe) -> torch.nn.Module:
    method, base_dtype = recipe.method, recipe.training.base_dtype
    if base_dtype != "float32" and method.name in HALF_BASE_REFUSED:
        raise RecipeError(f"training.base_dtype: {HALF_BASE_REFUSED[method.name]}; use float32")
    try:
        base = CLIPModel.from_pretrained(recipe.base_model, dtype=getattr(torch, base_dtype))
    except OSError as error:  # not on the Hub, no access, no network
        raise RecipeError(
            f"base_model: {recipe.base_model} could not be loaded: {first_line(error)}"
        ) from None
    if method.name in ("full", "linear_probe"):
        if method.config:
            raise RecipeError(f"method.config: {method.name} takes no options")
        if method.name == "linear_probe":
            for name, parameter in base.named_parameters():
                parameter.requires_grad_(name.split(".")[0] in LINEAR_PROBE_MODULES)
        return base
    configs = {
        "mrs_adapter": MRSAdapterConfig,
        "pos_prompt": POSPromptConfig,
        "lora": lora_baseline_config,
        "bottleneck_adapter": BottleneckAdapterConfig,
    }
    try:
        config = configs[method.name](**method.config)
    except (TypeError, ValueError) as error:  # an unknown field, or a value the config rejects
        raise RecipeError(f"method.config: {error}") from None
    config.base_model_name_or_path = recipe.base_model
    return get_peft_model(base, config)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, base)``: parameters being trained, and parameters of the base CLIP (a PEFT tuner's
    own parameters, trainable or not, are not part of the base)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not isinstance(model, PeftModel):
        return trainable, sum(p.numel() for p in model.parameters())
    prefix = model.base_model.prefix
    base = sum(p.numel() for name, p in model.get_base_model().named_parameters() if prefix not in name)
    return trainable, base


def peak_memory_mb(device: torch.device) -> tuple[float | None, str | None]:
    """Peak memory of this process so far: CUDA's peak allocation, else the peak resident set size
    (``None`` where the ``resource`` module does not exist, i.e. on Windows)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        import resource
    except ImportError:
        return None, None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss"


def token_dropout_of(model: torch.nn.Module) -> float:
    """The augmented views' token dropout: the MRS-Adapter config's, else the paper's 0.2."""
    if isinstance(model, PeftModel):
        return getattr(model.peft_config["default"], "token_dropout", DEFAULT_TOKEN_DROPOUT)
    return DEFAULT_TOKEN_DROPOUT


def pos_mode_of(model: torch.nn.Module) -> str | None:
    """``"sentence"``/``"aligned"`` for a POSAPL model (its text needs POS inputs), else ``None``."""
    config = model.peft_config["default"] if isinstance(model, PeftModel) else None
    return config.pos_mode if isinstance(config, POSPromptConfig) else None


# --- Data: the splits, their pixels, the training batches -------------------------------------------


@dataclass
class RunData:
    """The splits of a run, each split's images as uint8 pixels (cached or decoded), and the training
    caption pairs (tokenised, one row per caption)."""

    dataset: datasets.DatasetDict
    pixels: dict[str, PixelSource]
    pairs: datasets.Dataset
    num_workers: int


def load_data(recipe: Recipe, tokenizer, pos_mode: str | None) -> datasets.DatasetDict:
    """The DatasetDict of the recipe; with POS columns (tagged once, then cached) for POSAPL."""
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


def prepare_data(recipe: Recipe, processor, pos_mode: str | None, accelerator: Accelerator) -> RunData:
    """Load the splits and their pixels; the main process builds the caches first, the others reuse them."""
    with accelerator.main_process_first():
        dataset = load_data(recipe, processor.tokenizer, pos_mode)
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
    return RunData(dataset, pixels, pairs, num_workers)


def training_loader(recipe: Recipe, data: RunData, pad_token_id: int, device: torch.device) -> DataLoader:
    training = recipe.training
    return DataLoader(
        data.pairs,
        batch_size=training.batch_size,
        shuffle=True,
        collate_fn=RetrievalCollator(data.pixels["train"], pad_token_id),
        num_workers=data.num_workers,
        persistent_workers=data.num_workers > 0,
        pin_memory=device.type == "cuda",
        # its own generator: a new iterator must not draw from the global RNG that checkpoints restore
        generator=torch.Generator().manual_seed(training.seed),
    )


# --- Optimisation ------------------------------------------------------------------------------------


def build_optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer_class = torch.optim.AdamW if recipe.optimizer.name == "adamw" else torch.optim.Adam
    return optimizer_class(
        trainable,
        lr=recipe.optimizer.lr,
        betas=tuple(recipe.optimizer.betas),
        weight_decay=recipe.optimizer.weight_decay,
    )


def total_steps_of(recipe: Recipe, steps_per_epoch: int) -> int:
    """Optimiser steps of the whole run: ``epochs`` epochs, or ``max_steps`` when set."""
    if recipe.training.max_steps is not None:
        return recipe.training.max_steps
    return steps_per_epoch * recipe.training.epochs


def build_scheduler(recipe: Recipe, optimizer, steps_per_epoch: int, total_steps: int):
    schedule = recipe.schedule
    if schedule.name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, 0, max(total_steps, 1))
    if schedule.name == "step":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: schedule.gamma ** ((step // steps_per_epoch) // schedule.step_epochs)
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


# --- One step ----------------------------------------------------------------------------------------


@dataclass
class TrainingStep:
    """The loss of one training batch (as collated by ``RetrievalCollator``, on the device).

    The uint8 pixels become ``pixel_values`` on the device (augmentation drawn from ``(seed, epoch,
    pair_index)``, then normalisation); HMMC encodes clean and token-dropout views of both towers, POSAPL
    one view with its POS inputs.
    """

    model: torch.nn.Module
    loss: LossRecipe
    images: ImageBatchTransform
    token_dropout: float = DEFAULT_TOKEN_DROPOUT

    def __call__(self, batch: dict, epoch: int) -> torch.Tensor:
        pixel_values = self.images(batch["pixels"], batch["pair_index"], epoch)
        options = self.loss
        if options.name == "hmmc":  # PE-RSITR: clean and augmented views of both towers
            views = encode_views(
                self.model, pixel_values, batch["input_ids"], batch["attention_mask"], self.token_dropout
            )
            return hmmc_loss(
                views.image, views.text, views.image_aug, views.text_aug, image_ids=batch["image_ids"],
                margin=options.margin, max_violation=options.max_violation,
                mask_same_image=options.mask_same_image,
            )  # fmt: skip
        pos_inputs = {key: batch[key] for key in ("pos_input_ids", "pos_tag_ids") if key in batch}
        output = self.model(
            pixel_values=pixel_values, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            return_dict=True, **pos_inputs,
        )  # fmt: skip
        return posapl_loss(
            output.image_embeds.float(), output.text_embeds.float(), batch["image_ids"],
            unwrap_clip(self.model).logit_scale, options.exponentiate_scale,
            options.margin, options.power, options.mask_same_image,
        )  # fmt: skip


@dataclass
class Run:
    """Everything a training run holds between its phases."""

    recipe: Recipe
    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by Accelerate (DDP, compiled ...)
    processor: CLIPProcessor
    data: RunData
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: object
    step: TrainingStep
    state: TrainerState
    steps_per_epoch: int
    total_steps: int
    pos_mode: str | None
    cost: dict
    run_id: str = field(default_factory=new_run_id)  # marks this run's checkpoints (kept when resuming)

    @property
    def output_dir(self) -> Path:
        return Path(self.recipe.output_dir)

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The model itself (a PeftModel or CLIPModel), without DDP or compile wrappers."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)


def use_synthetic_task(recipe: Recipe, accelerator: Accelerator) -> None:
    """With ``recipe.synthetic_task``, prepare the demo's task there (main process first) and point
    ``base_model`` and ``data.path`` at it."""
    from .demo import prepare_demo_task

    with accelerator.main_process_first():
        base, target = prepare_demo_task(recipe.synthetic_task)
    recipe.base_model, recipe.data.format, recipe.data.path = str(base), "seed", str(target)


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
            "demo's base, run rsitr-demo or set synthetic_task"
        ) from None
    if HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise RecipeError(
            f"base_model: {name} is not a folder here and not in the local Hub cache, and HF_HUB_OFFLINE is "
            "set: download it once with the network, or give a local folder"
        )


def image_transform(recipe: Recipe, processor) -> ImageBatchTransform:
    """uint8 pixels -> ``pixel_values`` on the device: the crop and flip (``data.augment``), then RandAugment
    (``data.randaugment``), each drawn per example, then CLIP's normalisation."""
    data, seed = recipe.data, recipe.training.seed
    rand_augment = None
    if data.randaugment is not None:
        if len(data.randaugment) != 2 or data.randaugment[1] > 30:
            raise RecipeError(
                f"data.randaugment: expected [num_ops, magnitude] with magnitude 0-30, got {data.randaugment}"
            )
        rand_augment = RandAugment(num_ops=data.randaugment[0], magnitude=data.randaugment[1], seed=seed)
    return ImageBatchTransform(
        PixelNormalizer.from_processor(processor.image_processor),
        RandomResizedCropFlip(seed=seed) if data.augment else None,
        rand_augment,
    )


def set_up(recipe: Recipe, resume_from_checkpoint: str | None = None) -> Run:
    """Everything before the first step: accelerator, model, data, optimiser, schedule, checkpoint hooks,
    and the state of an interrupted run when resuming."""
    training = recipe.training
    accelerator = create_accelerator(recipe)
    claim_output_dir(
        Path(recipe.output_dir),
        resuming=bool(resume_from_checkpoint),
        overwrite=recipe.overwrite_output_dir,
        main_process=accelerator.is_main_process,
    )
    accelerator.wait_for_everyone()
    if recipe.synthetic_task:
        use_synthetic_task(recipe, accelerator)
    check_base_model(recipe.base_model)
    set_seed(training.seed)
    model = build_model(recipe)
    trainable_parameters, base_parameters = parameter_counts(model)
    processor = CLIPProcessor.from_pretrained(recipe.base_model)
    pos_mode = pos_mode_of(model)
    if pos_mode is not None and recipe.loss.name != "posapl":
        raise RecipeError("loss.name: POSAPL (method pos_prompt) trains with the posapl loss")
    data = prepare_data(recipe, processor, pos_mode, accelerator)
    token_dropout = token_dropout_of(model)
    optimizer = build_optimizer(recipe, model)
    loader = training_loader(recipe, data, processor.tokenizer.pad_token_id, accelerator.device)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / training.gradient_accumulation_steps)
    total_steps = total_steps_of(recipe, steps_per_epoch)
    scheduler = build_scheduler(recipe, optimizer, steps_per_epoch, total_steps)  # stepped per optimiser step
    state = TrainerState()  # checkpointed as JSON by save_checkpoint, never through Accelerate's pickles
    images = image_transform(recipe, processor)
    cost = {
        "trainable_parameters": trainable_parameters,
        "base_parameters": base_parameters,
        **run_settings(recipe, accelerator, data.num_workers),
    }
    run = Run(
        recipe, accelerator, model, processor, data, loader, optimizer, scheduler,
        TrainingStep(model, recipe.loss, images, token_dropout), state, steps_per_epoch, total_steps,
        pos_mode, cost,
    )  # fmt: skip
    checkpoint_adapter_only(run)
    if resume_from_checkpoint:
        resume(run, resume_from_checkpoint)
    logger.info(
        f"training {trainable_parameters:,} parameters for {total_steps} steps on {accelerator.device} "
        f"x{accelerator.num_processes}: base {cost['base_dtype']}, mixed precision {cost['mixed_precision']} "
        f"({cost['mixed_precision_from']}), compile {'on' if cost['compiled'] else 'off'} "
        f"({cost['compile_from']}), {data.num_workers} data workers, "
        f"images {'cached' if recipe.data.cache_images else 'decoded every epoch'}"
    )
    return run


def optimizer_step(run: Run, batch: dict) -> torch.Tensor:
    """Forward and backward of one micro-batch; clipping, optimiser step and zeroing once the gradients of
    ``gradient_accumulation_steps`` micro-batches are in. Returns the detached loss (not synchronised)."""
    accelerator, max_grad_norm = run.accelerator, run.recipe.training.max_grad_norm
    with accelerator.accumulate(run.model):
        loss = run.step(batch, run.state.epoch)
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm:
            accelerator.clip_grad_norm_(run.optimizer.param_groups[0]["params"], max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad()
    return loss.detach()


# --- Evaluation --------------------------------------------------------------------------------------


def text_options(run: Run, split: str) -> dict:
    if run.pos_mode is None:
        return {}
    return {  # POSAPL encodes the normalised captions with their POS inputs
        "caption_column": "pos_captions",
        "text_inputs": pos_text_inputs(run.data.dataset[split], run.processor.tokenizer, run.pos_mode),
    }


def evaluate(run: Run, split: str, protocols: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Retrieval metrics of the current model on ``split`` under each tie protocol of ``protocols`` (default:
    the recipe's ``evaluation.ties``), images read from the run's pixel source (decoding, without a cache,
    in the data workers)."""
    pixels = run.data.pixels[split]
    with run.accelerator.autocast():
        return evaluate_by_ties(
            run.unwrapped,
            run.data.dataset[split],
            run.processor,
            protocols or (run.recipe.evaluation.ties,),
            batch_size=run.recipe.training.eval_batch_size,
            accelerator=run.accelerator,
            pixels=pixels,
            num_workers=0 if run.recipe.data.cache_images else run.data.num_workers,
            **text_options(run, split),
        )


def validate(run: Run) -> None:
    """Validation metrics of the current step; the best adapter so far is saved to ``best_adapter/``."""
    state, accelerator = run.state, run.accelerator
    ties = run.recipe.evaluation.ties
    metrics = evaluate(run, "validation")[ties] if len(run.data.dataset["validation"]) else {}
    state.evaluations.append(
        {"step": state.global_step, "epoch": state.epoch, "split": "validation", **metrics}
    )
    accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=state.global_step)
    if "mR" not in metrics or state.best_mR is None or metrics["mR"] > state.best_mR:
        state.best_mR, state.best_step = metrics.get("mR"), state.global_step
        if accelerator.is_main_process:
            save_best(run.unwrapped, run.output_dir)
    accelerator.wait_for_everyone()


# --- Checkpoints -------------------------------------------------------------------------------------


def checkpoint_adapter_only(run: Run) -> None:
    """Make ``save_state``/``load_state`` store the adapter only, never the frozen backbone."""
    accelerator = run.accelerator
    if not isinstance(run.unwrapped, PeftModel):
        return

    def save_adapter_only(models, weights, checkpoint_dir):
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(models[0], keep_torch_compile=False)
            unwrapped.save_pretrained(Path(checkpoint_dir) / "adapter")
        weights.clear()

    def load_adapter_only(models, checkpoint_dir):
        peft_model = accelerator.unwrap_model(models.pop(), keep_torch_compile=False)
        weights = load_peft_weights(str(Path(checkpoint_dir) / "adapter"), device="cpu")
        set_peft_model_state_dict(peft_model, weights)

    accelerator.register_save_state_pre_hook(save_adapter_only)
    accelerator.register_load_state_pre_hook(load_adapter_only)


def save_best(model: torch.nn.Module, output_dir: Path) -> None:
    """The current adapter (or model) as ``best_adapter/``, written beside it and swapped in once whole."""
    replace_folder(output_dir / "best_adapter", model.save_pretrained)


def load_best(model: torch.nn.Module, output_dir: Path) -> None:
    best_dir = output_dir / "best_adapter"
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_peft_weights(str(best_dir), device="cpu"))
    else:
        model.load_state_dict(CLIPModel.from_pretrained(best_dir).state_dict())


def save_checkpoint(run: Run) -> None:
    """A resumable checkpoint ``checkpoints/step_N``: the adapter, optimiser and RNG states (Accelerate's
    ``save_state``), the trainer state and schedule as JSON, and the best adapter so far, written as
    ``step_N.partial`` and renamed once complete; this run's checkpoints beyond ``checkpoints_total_limit``
    are deleted."""
    accelerator, limit = run.accelerator, run.recipe.training.checkpoints_total_limit
    checkpoints_dir = run.output_dir / "checkpoints"
    partial = partial_folder(checkpoints_dir, run.state.global_step)
    if accelerator.is_main_process and partial.exists():  # left by an interrupted write
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trainer_state = {"trainer": run.state.state_dict(), "scheduler": run.scheduler.state_dict()}
        write_json(partial / TRAINER_STATE, trainer_state)
        shutil.copytree(run.output_dir / "best_adapter", partial / "best_adapter")
        seal_checkpoint(partial, run.run_id, run.state.global_step, accelerator.num_processes)
        if limit:
            prune_checkpoints(checkpoints_dir, run.run_id, limit)
    accelerator.wait_for_everyone()


def resume(run: Run, checkpoint: str) -> None:
    """Restore an interrupted run from ``checkpoint`` (``latest``: the newest complete one, or a folder),
    once every file its manifest lists is there: adapter, optimiser, schedule, RNG states, progress and the
    best adapter so far. The run keeps the checkpoint's run id."""
    accelerator, output_dir = run.accelerator, run.output_dir
    folder = latest_checkpoint(output_dir / "checkpoints") if checkpoint == "latest" else Path(checkpoint)
    manifest = verify_checkpoint(folder, accelerator.num_processes)
    trainer_state = read_json(folder / TRAINER_STATE, "the checkpoint cannot be resumed")
    accelerator.load_state(str(folder))
    run.state.load_state_dict(trainer_state["trainer"])
    run.scheduler.load_state_dict(trainer_state["scheduler"])
    run.run_id = manifest["run_id"]
    if accelerator.is_main_process:
        replace_folder(
            output_dir / "best_adapter", lambda staged: shutil.copytree(folder / "best_adapter", staged)
        )
    accelerator.wait_for_everyone()
    logger.info(f"resumed from {folder} at step {run.state.global_step}, epoch {run.state.epoch}")


# --- The loop ----------------------------------------------------------------------------------------


@dataclass
class LossLog:
    """Losses of recent optimiser steps, read from the device together every few steps (reading one
    synchronises the host with the device, which would stall the next step), with the wall time per step
    of each window between reads."""

    pending: list = field(default_factory=list)  # (step, loss tensor on the device)
    window_started: float = field(default_factory=time.perf_counter)
    seconds_per_step: list = field(default_factory=list)

    def read(self, run: Run, progress) -> None:
        """Record the pending losses in the state and the trackers, and close the timing window."""
        if self.pending:
            values = torch.stack([loss for _, loss in self.pending]).float().tolist()
            self.seconds_per_step.append((time.perf_counter() - self.window_started) / len(self.pending))
            for (step, _), value in zip(self.pending, values, strict=True):
                run.state.train_loss.append({"step": step, "loss": value})
                run.accelerator.log({"train/loss": value}, step=step)
            run.accelerator.log({"train/lr": run.scheduler.get_last_lr()[0]}, step=run.state.global_step)
            progress.set_postfix(loss=f"{values[-1]:.3f}", best_mR=run.state.best_mR)
            self.pending.clear()
        self.restart()

    def restart(self) -> None:
        self.window_started = time.perf_counter()


def train(recipe: Recipe, resume_from_checkpoint: str | None = None) -> TrainResult:
    run = set_up(recipe, resume_from_checkpoint)
    accelerator, state, training = run.accelerator, run.state, recipe.training
    if accelerator.is_main_process:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, run.output_dir / "recipe.yaml")
    accelerator.init_trackers("rsitr_hf", config=_flat(recipe.to_dict()))

    if state.global_step == 0 and state.batches_done_in_epoch == 0 and state.epoch == 0:
        validate(run)  # the starting point: zero-shot for adapters initialised to identity
    losses = LossLog()
    progress = tqdm(
        total=run.total_steps,
        initial=state.global_step,
        disable=not accelerator.is_local_main_process,
        desc="training",
    )
    while state.epoch < training.epochs and state.global_step < run.total_steps:
        run.model.train()
        run.loader.set_epoch(state.epoch)
        batches = (
            accelerator.skip_first_batches(run.loader, state.batches_done_in_epoch)
            if state.batches_done_in_epoch
            else run.loader
        )
        losses.restart()
        for batch in batches:
            loss = optimizer_step(run, batch)
            state.batches_done_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            run.scheduler.step()
            state.global_step += 1
            losses.pending.append((state.global_step, accelerator.gather(loss[None]).mean()))
            progress.update(1)
            finished = state.global_step >= run.total_steps
            evaluate_now = training.eval_every_steps and state.global_step % training.eval_every_steps == 0
            save_now = (
                training.checkpoint_every_steps and state.global_step % training.checkpoint_every_steps == 0
            )
            if len(losses.pending) >= LOSS_READ_EVERY or evaluate_now or save_now or finished:
                losses.read(run, progress)
            if evaluate_now:
                validate(run)
            if save_now:
                save_checkpoint(run)
            if evaluate_now or save_now:
                losses.restart()  # the time per step leaves evaluations and checkpoints out
            if finished:
                break
        if state.batches_done_in_epoch >= len(run.loader):  # the epoch ran to its end
            state.epoch += 1
            state.batches_done_in_epoch = 0
        losses.read(run, progress)
        if not training.eval_every_steps:
            validate(run)
        if not training.checkpoint_every_steps:
            save_checkpoint(run)
    progress.close()
    return finish(run, losses.seconds_per_step)


# --- Outputs -----------------------------------------------------------------------------------------


def finish(run: Run, seconds_per_step: list[float]) -> TrainResult:
    """Evaluate the best adapter once on test, write the outputs and push to the Hub if asked."""
    accelerator, recipe, state, output_dir = run.accelerator, run.recipe, run.state, run.output_dir
    unwrapped = run.unwrapped
    load_best(unwrapped, output_dir)
    test_by_ties = evaluate(run, "test", TIE_PROTOCOLS)
    test_metrics = test_by_ties[recipe.evaluation.ties]
    state.evaluations.append({"step": state.best_step, "epoch": None, "split": "test", **test_metrics})
    accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=state.global_step)
    memory_mb, memory_kind = peak_memory_mb(accelerator.device)
    cost = {
        **run.cost,
        "seconds_per_step": statistics.median(seconds_per_step) if seconds_per_step else None,
        "steps_timed": len(state.train_loss),
        "batch_size": recipe.training.batch_size * recipe.training.gradient_accumulation_steps,
        "peak_memory_mb": memory_mb,
        "memory_kind": memory_kind,
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
    }
    result = TrainResult(output_dir, test_metrics, state.best_step, state.best_mR, cost)
    push_error = None
    if accelerator.is_main_process:
        write_outputs(recipe, unwrapped, run.processor, state, test_by_ties, cost, output_dir)
        if len(run.data.dataset["validation"]):
            with accelerator.autocast():
                examples = split_examples(
                    unwrapped, run.data.dataset["validation"], run.processor,
                    batch_size=recipe.training.eval_batch_size, pixels=run.data.pixels["validation"],
                    **text_options(run, "validation"),
                )  # fmt: skip
            plot_retrieval_grid(
                examples, output_dir / "retrieval_examples.png", "validation queries, best adapter"
            )
        if recipe.hub.push_to_hub:
            try:
                result.pushed_to = push_adapter(
                    output_dir / "adapter",
                    recipe.hub.model_id,
                    recipe.to_dict(),
                    test_metrics,
                    dataset_name=Path(recipe.data.path).name or recipe.data.path,
                    private=recipe.hub.private,
                )
            except HubPushError as error:  # raised after the other processes have finished too
                push_error = error
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if push_error is not None:
        raise push_error
    return result


def write_outputs(
    recipe, model, processor, state: TrainerState, test_by_ties: dict, cost: dict, output_dir: Path
) -> None:
    """Main process only: the final adapter folder, metrics.json and the plots."""
    from .plots import plot_recalls, plot_training_curve

    def write_adapter(folder: Path) -> None:
        shutil.copytree(output_dir / "best_adapter", folder)
        processor.save_pretrained(folder)

    replace_folder(output_dir / "adapter", write_adapter)
    metrics = {
        "best": {"step": state.best_step, "validation_mR": state.best_mR},
        **test_results(test_by_ties, recipe.evaluation.ties),
        "cost": cost,
        "evaluations": state.evaluations,
        "train_loss": state.train_loss,
    }
    write_json(output_dir / "metrics.json", metrics)
    plot_training_curve(state.train_loss, state.evaluations, output_dir / "training_curve.png")
    plot_recalls(state.evaluations, output_dir / "recall.png")


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def _tensorboard_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("tensorboard") is not None or find_spec("tensorboardX") is not None


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        __doc__, usage="%(prog)s [--config RECIPE] [--section.field VALUE ...] [--resume_from_checkpoint DIR]"
    )
    parser.add_argument("--config", help="YAML recipe (see hub_configs/); without one, the defaults below")
    parser.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    recipe_options = add_recipe_arguments(parser)
    args = parse_arguments(parser, argv)
    try:
        recipe = load_recipe(args.config, recipe_overrides(args, recipe_options))
        if recipe.hub.push_to_hub and not recipe.hub.model_id:
            raise RecipeError("--push_to_hub needs --hub_model_id user/name")
        train(recipe, args.resume_from_checkpoint)
    except HubPushError as error:
        return report_error(error, status=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
