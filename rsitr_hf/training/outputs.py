"""The outputs of a training run: the best adapter evaluated once on test, ``adapter/``, ``metrics.json``, the
plots and the retrieval examples, and the push to the Hub."""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from ..evaluation import TIE_PROTOCOLS, mean_metrics, test_results
from ..evaluation.grids import plot_retrieval_grid, split_examples
from ..utils.files import write_json
from .checkpoints import TrainerState, load_best, replace_folder
from .data import dataset_name, other_test_splits
from .hub import HubPushError, push_adapter
from .plots import plot_recalls, plot_training_curve
from .recipe import Recipe
from .setup import load_base_model
from .validation import Evaluator, zero_shot_classification


@dataclass
class TrainResult:
    """What :func:`~rsitr_hf.training.train` returns: where the run wrote, its test metrics, the selected
    step and its validation mR, the cost (``metrics.json``'s ``cost``), the zero-shot classification
    figures (``evaluation.classification``) and the Hub URL when it was pushed."""

    output_dir: Path
    test_metrics: dict
    best_step: int
    best_validation_mR: float | None
    cost: dict = field(default_factory=dict)
    classification: list[dict] = field(default_factory=list)
    pushed_to: str | None = None


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


def finish(
    recipe: Recipe,
    accelerator: Accelerator,
    model: torch.nn.Module,
    evaluator: Evaluator,
    state: TrainerState,
    cost: dict,
    seconds_per_step: list[float],
) -> TrainResult:
    """Evaluate the best adapter once on test (under every tie protocol), write the outputs (main process)
    and push them to the Hub if the recipe asks."""
    output_dir = Path(recipe.output_dir)
    load_best(model, output_dir)
    ties = recipe.evaluation.ties
    own = evaluator.metrics(model, "test", TIE_PROTOCOLS)  # {dataset: {protocol: metrics}}
    test_by_ties = {
        protocol: mean_metrics([found[protocol] for found in own.values()]) for protocol in TIE_PROTOCOLS
    }  # the mean over the run's datasets (a run on one: its figures)
    test_metrics = test_by_ties[ties]
    own_tests = {name: found[ties] for name, found in own.items()}
    by_dataset = tests_by_dataset(recipe, model, evaluator, own_tests)
    entry = {"step": state.best_step, "epoch": None, "split": "test", **test_metrics}
    state.evaluations.append({**entry, **({"by_dataset": by_dataset} if by_dataset else {})})
    accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=state.global_step)
    memory_mb, memory_kind = peak_memory_mb(accelerator.device)
    cost = {
        **cost,
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
        classification = []
        if evaluator.class_folders:
            base = load_base_model(recipe).to(accelerator.device).eval()
            classification = zero_shot_classification(model.eval(), base, evaluator)
            result.classification = classification
        write_outputs(
            recipe, evaluator.processor, state, test_by_ties, cost, classification, by_dataset,
            evaluator.data.mix,
        )  # fmt: skip
        if evaluator.data.evaluated("validation"):
            plot_examples(model, evaluator, output_dir / "retrieval_examples.png")
        if recipe.hub.push_to_hub:
            try:
                results = {k: v for k, v in by_dataset.items() if k != "mean"} or {
                    dataset_name(recipe): test_metrics
                }
                result.pushed_to = push_adapter(
                    output_dir / "adapter", recipe.hub.model_id, recipe.to_dict(), results, recipe.hub.private
                )
            except HubPushError as error:  # raised after the other processes have finished too
                push_error = error
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if push_error is not None:
        raise push_error
    return result


def write_outputs(
    recipe: Recipe,
    processor,
    state: TrainerState,
    test_by_ties: dict,
    cost: dict,
    classification: list[dict] | None = None,
    by_dataset: dict | None = None,
    training_data: dict | None = None,
) -> None:
    """Main process only: the final adapter folder (the best adapter and the processor), ``metrics.json``
    (with ``zero_shot_classification`` and ``test_by_dataset`` when the recipe asks, and what each dataset
    brought to training, ``training_data``) and the training plots."""
    output_dir = Path(recipe.output_dir)

    def write_adapter(folder: Path) -> None:
        shutil.copytree(output_dir / "best_adapter", folder)
        processor.save_pretrained(folder)

    replace_folder(output_dir / "adapter", write_adapter)
    metrics = {
        "best": {"step": state.best_step, "validation_mR": state.best_mR},
        **test_results(test_by_ties, recipe.evaluation.ties),
        **monitored_test(state.evaluations),
        "cost": cost,
        **({"training_data": training_data} if training_data else {}),
        **({"zero_shot_classification": classification} if classification else {}),
        **({"test_by_dataset": by_dataset} if by_dataset else {}),
        "evaluations": state.evaluations,
        "train_loss": state.train_loss,
    }
    write_json(output_dir / "metrics.json", metrics)
    plot_training_curve(state.train_loss, state.evaluations, output_dir / "training_curve.png")
    plot_recalls(state.evaluations, output_dir / "recall.png")


SELECTED_ON_TEST = (
    "selected on the test split (the best test mR of every validation), as the HarMA release selects its "
    "checkpoint: for comparison with its paper only, not a clean protocol"
)


def monitored_test(evaluations: list[dict]) -> dict:
    """With ``evaluation.test_every_validation``: ``test_last``, the test figures at the last validation, and
    ``test_selected_on_test``, the best of them by test mR, labelled as selected on test (else nothing)."""
    monitored = [entry for entry in evaluations if entry["split"] == "test_monitor"]
    if not monitored:
        return {}
    best = max(monitored, key=lambda entry: entry["mR"])
    return {"test_last": monitored[-1], "test_selected_on_test": {**best, "selection": SELECTED_ON_TEST}}


def tests_by_dataset(recipe: Recipe, model: torch.nn.Module, evaluator: Evaluator, own: dict) -> dict:
    """The test metrics (the run's tie protocol) of each of the run's datasets (``own``) and of each of
    ``evaluation.test_datasets``, by dataset name, and their ``mean``; ``{}`` for a run on one dataset that
    lists no other. Every process takes part (the embedding is sharded)."""
    if len(own) == 1 and not recipe.evaluation.test_datasets:
        return {}
    with evaluator.accelerator.main_process_first():  # the main process caches, the others reuse
        others = other_test_splits(recipe, evaluator.processor, evaluator.data.pos_mode)
    found = dict(own)
    for name, (rows, pixels) in others.items():
        found[name] = evaluator.metrics_of(model, rows, pixels)[recipe.evaluation.ties]
    return {**found, "mean": mean_metrics(list(found.values()))}


def plot_examples(model: torch.nn.Module, evaluator: Evaluator, path: Path) -> None:
    """The top-5 validation images of a few validation captions (of the first dataset that has a validation
    split), with the best adapter."""
    name, (rows, pixels) = next(iter(evaluator.data.evaluated("validation").items()))
    with evaluator.accelerator.autocast():
        examples = split_examples(
            model, rows, evaluator.processor, batch_size=evaluator.batch_size, pixels=pixels,
            **evaluator.text_options(rows),
        )  # fmt: skip
    several = len(evaluator.data.splits) > 1
    plot_retrieval_grid(examples, path, f"{name + ' ' if several else ''}validation queries, best adapter")
