"""What a training run writes (main process): the final adapter folder (the selected adapter, the processor
and the record of its text inputs), ``metrics.json`` (every evaluation, the test figures, the cost), the
plots and the retrieval examples."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import torch
from accelerate import Accelerator

from ..data.text_inputs import TextInputs
from ..evaluation import ScoredTests
from ..evaluation.grids import plot_retrieval_grid, split_examples
from ..utils.files import write_json
from .checkpoints import TrainerState, replace_folder
from .evaluator import Evaluator
from .plots import plot_recalls, plot_training_curve
from .recipe import Recipe


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


def final_cost(
    recipe: Recipe, accelerator: Accelerator, state: TrainerState, cost: dict, seconds_per_step: list[float]
) -> dict:
    """``metrics.json``'s ``cost``: what the run set up (``cost``), the median time per optimiser step, the
    batch an optimiser step sees per process, peak memory, the device and the processes."""
    memory_mb, memory_kind = peak_memory_mb(accelerator.device)
    return {
        **cost,
        "seconds_per_step": statistics.median(seconds_per_step) if seconds_per_step else None,
        "steps_timed": len(state.train_loss),
        "batch_size": recipe.training.batch_size * recipe.training.gradient_accumulation_steps,
        "peak_memory_mb": memory_mb,
        "memory_kind": memory_kind,
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
    }


def write_outputs(
    recipe: Recipe,
    processor,
    text_inputs: TextInputs,
    state: TrainerState,
    tested: ScoredTests,
    cost: dict,
    classification: list[dict] | None = None,
    training_data: dict | None = None,
) -> None:
    """Main process only: the final adapter folder (the best adapter, the processor and the record of the text
    inputs, ``text_inputs.json``), ``metrics.json`` (the test figures of ``tested``, with
    ``test_by_dataset`` when several datasets were scored; ``zero_shot_classification`` when the recipe asks;
    what each dataset brought to training, ``training_data``) and the training plots."""
    output_dir = Path(recipe.output_dir)

    def write_adapter(folder: Path) -> None:
        shutil.copytree(output_dir / "best_adapter", folder)
        processor.save_pretrained(folder)
        text_inputs.save(folder)

    replace_folder(output_dir / "adapter", write_adapter)
    metrics = {
        "best": {"step": state.best_step, "validation_mR": state.best_mR},
        **tested.results(),
        **monitored_test(state.evaluations),
        "cost": cost,
        **({"training_data": training_data} if training_data else {}),
        **({"zero_shot_classification": classification} if classification else {}),
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


def plot_examples(model: torch.nn.Module, evaluator: Evaluator, path: Path) -> None:
    """The top-5 validation images of a few validation captions (of the first dataset that has a validation
    split), with the best adapter."""
    name, (rows, pixels) = next(iter(evaluator.data.evaluated("validation").items()))
    with evaluator.accelerator.autocast():
        examples = split_examples(
            model, rows, evaluator.processor, batch_size=evaluator.batch_size, pixels=pixels,
            text_inputs=evaluator.data.text_inputs,
        )  # fmt: skip
    several = len(evaluator.data.splits) > 1
    plot_retrieval_grid(examples, path, f"{name + ' ' if several else ''}validation queries, best adapter")
