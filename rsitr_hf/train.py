"""Train an adapter on an RSITR benchmark with Accelerate.

    accelerate launch train_accelerate.py --config hub_configs/<recipe>.yaml [--section.field value ...]
        [--resume_from_checkpoint latest|DIR] [--push_to_hub --hub_model_id user/name]

The loop: build base model + processor, apply the PEFT config, load the data, train with gradient
accumulation / mixed precision / optional clipping, validate each epoch (or every N steps) keeping the
best adapter by validation mR, and evaluate that adapter once on test. Writes to ``output_dir``:
``adapter/`` (best adapter + processor), ``metrics.json`` (every evaluation with step and epoch, the
training loss, the test result, and the cost: trainable parameters, wall time per step, peak memory),
``training_curve.png``, ``recall.png``, ``retrieval_examples.png`` (top-5 images of a few validation
queries), ``recipe.yaml`` and resumable adapter-only checkpoints in ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPProcessor, get_cosine_schedule_with_warmup

from .baselines import lora_baseline_config
from .data import explode_captions, load_rsitr, load_rsitr_hub
from .data.pos import POSModelMissing, cached_pos_dataset, pos_text_inputs
from .data.preprocessing import CaptionPairTransform, RandomResizedCropFlip, RetrievalCollator
from .evaluation import evaluate_retrieval
from .hub import HubPushError, push_adapter
from .losses import hmmc_loss, posapl_loss
from .recipe import Recipe, RecipeError, load_recipe, save_recipe
from .tuners import BottleneckAdapterConfig, MRSAdapterConfig, POSPromptConfig
from .views import encode_views, unwrap_clip
from .visualize import plot_retrieval_grid, split_examples

logger = logging.getLogger(__name__)
DEFAULT_TOKEN_DROPOUT = 0.2


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


def build_model(recipe: Recipe) -> torch.nn.Module:
    """The base CLIP with the recipe's method applied: a PeftModel, or the bare model for ``full`` and
    ``linear_probe`` (everything frozen but ``LINEAR_PROBE_MODULES``)."""
    base = CLIPModel.from_pretrained(recipe.base_model)
    method = recipe.method
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
    config = configs[method.name](**method.config)
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


def token_dropout_of(recipe: Recipe, model: torch.nn.Module) -> float:
    """The augmented views' token dropout: the MRS-Adapter config's, else the paper's 0.2."""
    if isinstance(model, PeftModel):
        return getattr(model.peft_config["default"], "token_dropout", DEFAULT_TOKEN_DROPOUT)
    return DEFAULT_TOKEN_DROPOUT


def pos_mode_of(model: torch.nn.Module) -> str | None:
    """``"sentence"``/``"aligned"`` for a POSAPL model (its text needs POS inputs), else ``None``."""
    config = model.peft_config["default"] if isinstance(model, PeftModel) else None
    return config.pos_mode if isinstance(config, POSPromptConfig) else None


def load_data(recipe: Recipe, tokenizer, pos_mode: str | None):
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
    return cached_pos_dataset(dataset, identity, tokenizer, data.pos_cache, data.pos_model, data.stanza_dir)


def build_scheduler(recipe: Recipe, optimizer, steps_per_epoch: int):
    schedule = recipe.schedule
    total_steps = steps_per_epoch * recipe.training.epochs
    if schedule.name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, 0, max(total_steps, 1))
    if schedule.name == "step":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: schedule.gamma ** ((step // steps_per_epoch) // schedule.step_epochs)
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def latest_checkpoint(output_dir: Path) -> Path:
    checkpoints = sorted((output_dir / "checkpoints").glob("step_*"))
    if not checkpoints:
        raise FileNotFoundError(
            f"--resume_from_checkpoint latest: no checkpoint in {output_dir / 'checkpoints'}"
        )
    return checkpoints[-1]


def save_best(model: torch.nn.Module, output_dir: Path) -> None:
    best_dir = output_dir / "best_adapter"
    if best_dir.exists():
        shutil.rmtree(best_dir)
    model.save_pretrained(best_dir)


def load_best(model: torch.nn.Module, output_dir: Path) -> None:
    best_dir = output_dir / "best_adapter"
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_peft_weights(str(best_dir), device="cpu"))
    else:
        model.load_state_dict(CLIPModel.from_pretrained(best_dir).state_dict())


def train(recipe: Recipe, resume_from_checkpoint: str | None = None) -> TrainResult:
    output_dir = Path(recipe.output_dir)
    training = recipe.training
    # without cpu=True, a GPU-less `accelerate launch --multi_gpu` runs unsynchronised copies
    accelerator = Accelerator(
        cpu=not _has_accelerator(),
        mixed_precision=training.mixed_precision,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        log_with="tensorboard" if _tensorboard_installed() else None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=training.seed),
    )
    set_seed(training.seed)

    # Model, processor and data
    model = build_model(recipe)
    trainable_parameters, base_parameters = parameter_counts(model)
    processor = CLIPProcessor.from_pretrained(recipe.base_model)
    pos_mode = pos_mode_of(model)
    if pos_mode is not None and recipe.loss.name != "posapl":
        raise RecipeError("loss.name: POSAPL (method pos_prompt) trains with the posapl loss")
    dataset = load_data(recipe, processor.tokenizer, pos_mode)
    augmentation = RandomResizedCropFlip(seed=training.seed) if recipe.data.augment else None
    pairs = explode_captions(dataset["train"]).with_transform(
        CaptionPairTransform(processor, augmentation=augmentation, pos_mode=pos_mode)
    )
    loader = DataLoader(
        pairs,
        batch_size=training.batch_size,
        shuffle=True,
        collate_fn=RetrievalCollator(processor.tokenizer),
        num_workers=training.num_workers,
        # its own generator: a new iterator must not draw from the global RNG that checkpoints restore
        generator=torch.Generator().manual_seed(training.seed),
    )
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer_class = torch.optim.AdamW if recipe.optimizer.name == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(
        trainable,
        lr=recipe.optimizer.lr,
        betas=tuple(recipe.optimizer.betas),
        weight_decay=recipe.optimizer.weight_decay,
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / training.gradient_accumulation_steps)
    scheduler = build_scheduler(recipe, optimizer, steps_per_epoch)  # stepped once per optimiser step
    state = TrainerState()
    accelerator.register_for_checkpointing(scheduler, state)

    # Checkpoints hold the adapter only, never the frozen backbone
    if isinstance(accelerator.unwrap_model(model), PeftModel):

        def save_adapter_only(models, weights, checkpoint_dir):
            if accelerator.is_main_process:
                accelerator.unwrap_model(models[0]).save_pretrained(Path(checkpoint_dir) / "adapter")
            weights.clear()

        def load_adapter_only(models, checkpoint_dir):
            peft_model = accelerator.unwrap_model(models.pop())
            weights = load_peft_weights(str(Path(checkpoint_dir) / "adapter"), device="cpu")
            set_peft_model_state_dict(peft_model, weights)

        accelerator.register_save_state_pre_hook(save_adapter_only)
        accelerator.register_load_state_pre_hook(load_adapter_only)

    if resume_from_checkpoint:
        checkpoint = (
            latest_checkpoint(output_dir)
            if resume_from_checkpoint == "latest"
            else Path(resume_from_checkpoint)
        )
        accelerator.load_state(str(checkpoint))
        if accelerator.is_main_process:
            if (output_dir / "best_adapter").exists():
                shutil.rmtree(output_dir / "best_adapter")
            shutil.copytree(checkpoint / "best_adapter", output_dir / "best_adapter")
        accelerator.wait_for_everyone()
        accelerator.print(f"resumed from {checkpoint} at step {state.global_step}, epoch {state.epoch}")

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, output_dir / "recipe.yaml")
    accelerator.init_trackers("rsitr_hf", config=_flat(recipe.to_dict()))

    def text_options(split: str) -> dict:
        if pos_mode is None:
            return {}
        return {  # POSAPL encodes the normalised captions with their POS inputs
            "caption_column": "pos_captions",
            "text_inputs": pos_text_inputs(dataset[split], processor.tokenizer, pos_mode),
        }

    def evaluate(split: str) -> dict:
        with accelerator.autocast():
            return evaluate_retrieval(
                accelerator.unwrap_model(model),
                dataset[split],
                processor,
                batch_size=training.eval_batch_size,
                accelerator=accelerator,
                **text_options(split),
            )

    def validate() -> None:
        metrics = evaluate("validation") if len(dataset["validation"]) else {}
        state.evaluations.append(
            {"step": state.global_step, "epoch": state.epoch, "split": "validation", **metrics}
        )
        accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=state.global_step)
        if "mR" not in metrics or state.best_mR is None or metrics["mR"] > state.best_mR:
            state.best_mR, state.best_step = metrics.get("mR"), state.global_step
            if accelerator.is_main_process:
                save_best(accelerator.unwrap_model(model), output_dir)
        accelerator.wait_for_everyone()

    def checkpoint() -> None:
        checkpoint_dir = output_dir / "checkpoints" / f"step_{state.global_step:08d}"
        accelerator.save_state(str(checkpoint_dir))
        if accelerator.is_main_process:  # the best adapter so far belongs to the resumable state
            shutil.copytree(output_dir / "best_adapter", checkpoint_dir / "best_adapter", dirs_exist_ok=True)
        if accelerator.is_main_process and training.checkpoints_total_limit:
            for old in sorted((output_dir / "checkpoints").glob("step_*"))[
                : -training.checkpoints_total_limit
            ]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()

    # Training
    token_dropout = token_dropout_of(recipe, accelerator.unwrap_model(model))
    loss_options = recipe.loss

    def training_loss(batch: dict) -> torch.Tensor:
        if loss_options.name == "hmmc":  # PE-RSITR: clean and augmented views of both towers
            views = encode_views(
                model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"], token_dropout
            )
            return hmmc_loss(
                views.image, views.text, views.image_aug, views.text_aug, image_ids=batch["image_ids"],
                margin=loss_options.margin, max_violation=loss_options.max_violation,
                mask_same_image=loss_options.mask_same_image,
            )  # fmt: skip
        pos_inputs = {key: batch[key] for key in ("pos_input_ids", "pos_tag_ids") if key in batch}
        output = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"], return_dict=True, **pos_inputs)  # fmt: skip
        return posapl_loss(
            output.image_embeds.float(), output.text_embeds.float(), batch["image_ids"],
            unwrap_clip(model).logit_scale, loss_options.exponentiate_scale,
            loss_options.margin, loss_options.power, loss_options.mask_same_image,
        )  # fmt: skip

    if state.global_step == 0 and state.batches_done_in_epoch == 0 and state.epoch == 0:
        validate()  # the starting point: zero-shot for adapters initialised to identity
    step_seconds = []  # wall time of each optimiser step, data loading included, evaluations excluded
    progress = tqdm(
        total=steps_per_epoch * training.epochs,
        initial=state.global_step,
        disable=not accelerator.is_local_main_process,
        desc="training",
    )
    while state.epoch < training.epochs:
        model.train()
        loader.set_epoch(state.epoch)
        if augmentation is not None:
            augmentation.epoch = state.epoch  # new crops each epoch, the same ones after a resume
        batches = (
            accelerator.skip_first_batches(loader, state.batches_done_in_epoch)
            if state.batches_done_in_epoch
            else loader
        )
        step_started = time.perf_counter()
        for batch in batches:
            with accelerator.accumulate(model):
                loss = training_loss(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and training.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, training.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            state.batches_done_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.global_step += 1
            step_loss = accelerator.gather(loss.detach()[None]).mean().item()  # waits for the device
            step_seconds.append(time.perf_counter() - step_started)
            state.train_loss.append({"step": state.global_step, "loss": step_loss})
            accelerator.log(
                {"train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0]}, step=state.global_step
            )
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.3f}", best_mR=state.best_mR)
            if training.eval_every_steps and state.global_step % training.eval_every_steps == 0:
                validate()
            if training.checkpoint_every_steps and state.global_step % training.checkpoint_every_steps == 0:
                checkpoint()
            step_started = time.perf_counter()
        state.epoch += 1
        state.batches_done_in_epoch = 0
        if not training.eval_every_steps:
            validate()
        if not training.checkpoint_every_steps:
            checkpoint()
    progress.close()

    # The best adapter, evaluated once on test
    unwrapped = accelerator.unwrap_model(model)
    load_best(unwrapped, output_dir)
    test_metrics = evaluate("test")
    state.evaluations.append({"step": state.best_step, "epoch": None, "split": "test", **test_metrics})
    accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=state.global_step)
    memory_mb, memory_kind = peak_memory_mb(accelerator.device)
    cost = {
        "trainable_parameters": trainable_parameters,
        "base_parameters": base_parameters,
        "seconds_per_step": statistics.median(step_seconds) if step_seconds else None,
        "steps_timed": len(step_seconds),
        "peak_memory_mb": memory_mb,
        "memory_kind": memory_kind,
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
    }
    result = TrainResult(output_dir, test_metrics, state.best_step, state.best_mR, cost)
    push_error = None
    if accelerator.is_main_process:
        write_outputs(recipe, unwrapped, processor, state, test_metrics, cost, output_dir)
        if len(dataset["validation"]):
            with accelerator.autocast():
                examples = split_examples(
                    unwrapped, dataset["validation"], processor, batch_size=training.eval_batch_size,
                    **text_options("validation"),
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
    recipe, model, processor, state: TrainerState, test_metrics: dict, cost: dict, output_dir: Path
) -> None:
    """Main process only: the final adapter folder, metrics.json and the plots."""
    from .plots import plot_recalls, plot_training_curve

    adapter_dir = output_dir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    shutil.copytree(output_dir / "best_adapter", adapter_dir)
    processor.save_pretrained(adapter_dir)
    metrics = {
        "best": {"step": state.best_step, "validation_mR": state.best_mR},
        "test": test_metrics,
        "cost": cost,
        "evaluations": state.evaluations,
        "train_loss": state.train_loss,
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
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


def _has_accelerator() -> bool:
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def _tensorboard_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("tensorboard") is not None or find_spec("tensorboardX") is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--config", help="YAML recipe (see hub_configs/)")
    parser.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    args, overrides = parser.parse_known_args(argv)
    try:
        recipe = load_recipe(args.config, overrides)
        if recipe.hub.push_to_hub and not recipe.hub.model_id:
            raise RecipeError("--push_to_hub needs --hub_model_id user/name")
        train(recipe, args.resume_from_checkpoint)
    except (RecipeError, FileNotFoundError, POSModelMissing) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except HubPushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
