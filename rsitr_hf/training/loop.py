"""The training loop, read top to bottom: set-up, data, the steps with validation and checkpoints, outputs.

Build the base model and processor and apply the recipe's method (as the method table declares it), load
the data (images decoded and resized once into a cache, batches moved to the device as uint8 and
normalised/augmented there; captions as the method's text inputs), train with the recipe's loss, gradient
accumulation, mixed precision, optional clipping and ``torch.compile``, validate each epoch (or every N
steps) keeping the best adapter by validation mR, and evaluate that adapter once on test. Writes to
``output_dir``: ``adapter/`` (best adapter, processor, the record of the text inputs), ``metrics.json``
(every evaluation with step and epoch, the training loss, the test result, and the cost: trainable
parameters, wall time per step, peak memory, the precision, compilation and data workers really used),
``training_curve.png``, ``recall.png``, ``retrieval_examples.png`` (top-5 images of a few validation
queries), ``recipe.yaml`` and resumable adapter-only checkpoints in ``checkpoints/``.

Mixed precision and compilation: a value set in the recipe (``training.mixed_precision``,
``training.compile``) wins; left unset, ``accelerate launch``'s flags or its config file decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..data.text_inputs import text_inputs_of
from ..objectives.table import get_loss
from ..tuners.methods import get_method
from ..utils.files import write_json
from .checkpoints import (
    TrainerState,
    claim_output_dir,
    keep_adapter_only,
    load_best,
    new_run_id,
    resume,
    save_checkpoint,
)
from .data import (
    check_test_datasets,
    image_transform,
    load_processor,
    named_sources,
    prepare_data,
    training_loader,
)
from .evaluator import Evaluator, class_folders_of, scene_classification, test_selected, validate
from .hub import HubPushError, push_run
from .outputs import final_cost, plot_examples, write_outputs
from .recipe import Recipe, RecipeError, save_recipe
from .setup import (
    build_model,
    build_optimizer,
    build_scheduler,
    check_base_model,
    create_accelerator,
    load_base_model,
    method_config,
    parameter_counts,
    run_settings,
    total_steps_of,
)
from .step import LossLog, TrainingStep

logger = get_logger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run wrote, its test metrics, the selected step and its
    validation mR, the cost (``metrics.json``'s ``cost``), the zero-shot classification figures
    (``evaluation.classification``) and the Hub URL when it was pushed."""

    output_dir: Path
    test_metrics: dict
    best_step: int
    best_validation_mR: float | None
    cost: dict = field(default_factory=dict)
    classification: list[dict] = field(default_factory=list)
    pushed_to: str | None = None


def train(recipe: Recipe, resume_from_checkpoint: str | None = None) -> TrainResult:
    """Train ``recipe``'s method (see the module docstring); ``resume_from_checkpoint``: ``latest`` or a
    checkpoint folder of an interrupted run in the same ``output_dir``."""
    training, output_dir = recipe.training, Path(recipe.output_dir)
    method = get_method(recipe.method.name)
    if not method.trains:
        raise RecipeError(f"method.name: {method.name} is evaluated, not trained (rsitr-petl runs it)")
    class_folders = class_folders_of(recipe)  # evaluation.classification, checked before any work
    check_test_datasets(recipe)  # evaluation.test_datasets, likewise
    named_sources(recipe)  # data.datasets / data.path, likewise

    # --- Set-up: the accelerator, the output folder, the model ------------------------------------------
    accelerator = create_accelerator(recipe)
    claim_output_dir(
        output_dir,
        resuming=bool(resume_from_checkpoint),
        overwrite=recipe.overwrite_output_dir,
        main_process=accelerator.is_main_process,
    )
    accelerator.wait_for_everyone()
    check_base_model(recipe.base_model)
    set_seed(training.seed)
    model = build_model(recipe, method)
    trainable_parameters, base_parameters = parameter_counts(model)
    processor = load_processor(recipe)

    # --- Data: the splits and their pixels (cached once), the training batches -----------------------------
    text_inputs = text_inputs_of(method, processor.tokenizer, method_config(model), recipe.text.options)
    data = prepare_data(recipe, processor, text_inputs, accelerator)
    loader = training_loader(recipe, data, accelerator.device)

    # --- Optimisation, prepared by Accelerate (DDP, mixed precision, compilation) --------------------------
    optimizer = build_optimizer(recipe, model)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / training.gradient_accumulation_steps)
    total_steps = total_steps_of(recipe, steps_per_epoch)
    scheduler = accelerator.prepare(
        build_scheduler(recipe, optimizer, steps_per_epoch, total_steps, accelerator.num_processes)
    )
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)  # a PeftModel or CLIPModel
    loss = get_loss(recipe.loss.name)
    step = TrainingStep(model, loss, recipe.loss.options, image_transform(recipe, processor))
    evaluator = Evaluator(
        accelerator, processor, data, training.eval_batch_size,
        num_workers=0 if recipe.data.cache_images else data.num_workers, ties=recipe.evaluation.ties,
        test_every_validation=recipe.evaluation.test_every_validation,
        class_folders=class_folders, templates=recipe.evaluation.classification_templates,
    )  # fmt: skip
    cost = {
        "trainable_parameters": trainable_parameters,
        "base_parameters": base_parameters,
        **run_settings(recipe, accelerator, data.num_workers),
    }

    # --- Checkpoints: the adapter only, and where an interrupted run resumes --------------------------------
    keep_adapter_only(accelerator, unwrapped)
    state, run_id = TrainerState(), new_run_id()  # the state is checkpointed as JSON, never pickled
    if resume_from_checkpoint:
        run_id = resume(accelerator, state, resume_from_checkpoint, output_dir)
    logger.info(
        f"training {trainable_parameters:,} parameters for {total_steps} steps on {accelerator.device} "
        f"x{accelerator.num_processes}: base {cost['base_dtype']}, mixed precision {cost['mixed_precision']} "
        f"({cost['mixed_precision_from']}), compile {'on' if cost['compiled'] else 'off'} "
        f"({cost['compile_from']}), {data.num_workers} data workers, "
        f"images {'cached' if recipe.data.cache_images else 'decoded every epoch'}"
    )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, output_dir / "recipe.yaml")
        if data.excluded:  # data.exclude_test_duplicates: what the audit took out of train and validation
            write_json(output_dir / "excluded_training_images.json", data.excluded)
    accelerator.init_trackers("rsitr_hf", config=flat(recipe.to_dict()))

    # --- Training: optimiser steps, with validation and checkpoints each epoch or every N steps ------------
    if state.at_start:
        validate(
            unwrapped, evaluator, state, output_dir
        )  # the starting point: zero-shot for identity adapters
    losses = LossLog()
    progress = tqdm(
        total=total_steps, initial=state.global_step, disable=not accelerator.is_local_main_process,
        desc="training",
    )  # fmt: skip
    while state.epoch < training.epochs and state.global_step < total_steps:
        model.train()
        loader.set_epoch(state.epoch)
        batches = (
            accelerator.skip_first_batches(loader, state.batches_done_in_epoch)
            if state.batches_done_in_epoch
            else loader
        )
        losses.restart()
        for batch in batches:
            with accelerator.accumulate(model):
                loss = step(batch, state.epoch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and training.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.batches_done_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            losses.add(state.global_step, accelerator.gather(loss.detach()[None]).mean())
            progress.update(1)
            finished = state.global_step >= total_steps
            evaluate_now = every(training.eval_every_steps, state.global_step)
            save_now = every(training.checkpoint_every_steps, state.global_step)
            if losses.due or evaluate_now or save_now or finished:
                losses.read(state, accelerator, scheduler.get_last_lr()[0], progress)
            if evaluate_now:
                validate(unwrapped, evaluator, state, output_dir)
            if save_now:
                save_checkpoint(accelerator, output_dir, state, run_id, training.checkpoints_total_limit)
            if evaluate_now or save_now:
                losses.restart()  # the time per step leaves evaluations and checkpoints out
            if finished:
                break
        if state.batches_done_in_epoch >= len(loader):  # the epoch ran to its end
            state.epoch += 1
            state.batches_done_in_epoch = 0
        losses.read(state, accelerator, scheduler.get_last_lr()[0], progress)
        if not training.eval_every_steps:
            validate(unwrapped, evaluator, state, output_dir)
        if not training.checkpoint_every_steps:
            save_checkpoint(accelerator, output_dir, state, run_id, training.checkpoints_total_limit)
    progress.close()
    # the DDP wrapper goes before the process group does: its gradient reducer, freed after the group, would
    # tear gloo's worker threads down holding the GIL, which they may need (a hang at exit)
    del step
    model, optimizer, loader, scheduler = accelerator.free_memory(model, optimizer, loader, scheduler)

    # --- Outputs: the selected adapter tested once, adapter/, metrics.json and plots, the Hub ---------------
    load_best(unwrapped, output_dir)
    tested = test_selected(recipe, unwrapped, evaluator, state)
    cost = final_cost(recipe, accelerator, state, cost, losses.seconds_per_step)
    result = TrainResult(output_dir, tested.metrics, state.best_step, state.best_mR, cost)
    if accelerator.is_main_process:
        if class_folders:
            base = load_base_model(recipe).to(accelerator.device).eval()
            result.classification = scene_classification(unwrapped.eval(), base, evaluator)
        write_outputs(recipe, processor, text_inputs, state, tested, cost, result.classification, data.mix)
        if data.evaluated("validation"):
            plot_examples(unwrapped, evaluator, output_dir / "retrieval_examples.png")
    push_error = None
    if recipe.hub.push_to_hub and accelerator.is_main_process:
        try:
            result.pushed_to = push_run(recipe, tested)
        except HubPushError as error:  # raised once every process has finished
            push_error = error
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if push_error is not None:
        raise push_error
    return result


def every(interval: int | None, step: int) -> bool:
    """Whether something done every ``interval`` optimiser steps (``None``: never by steps) is due now."""
    return bool(interval) and step % interval == 0


def flat(values: dict, prefix: str = "") -> dict:
    """A nested recipe mapping as ``{"section.field": value}``, values the trackers accept."""
    flattened = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flattened.update(flat(value, f"{prefix}{key}."))
        else:
            flattened[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flattened
