"""How a training run scores its model (retrieval sharded over the processes, captions as the method's text
inputs): validation, which keeps the best adapter so far (and, when asked, scores test beside it without
using it), the test of the selected adapter, and zero-shot scene classification of the final model against
the base."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from ..data.text_inputs import TextInputs
from ..evaluation import ScoredTests, evaluate_retrieval, mean_metrics, score_tests
from ..evaluation.classification import (
    ClassFolders,
    check_class_names,
    check_templates,
    evaluate_class_folders,
    read_class_folders,
)
from ..utils.errors import InputError
from .checkpoints import TrainerState, save_best
from .data import RunData, other_test_splits
from .recipe import Recipe, RecipeError


@dataclass
class Evaluator:
    """How a run scores its model: on ``data``'s splits, images from its pixel sources, captions as its
    method's text inputs, ``batch_size`` per process, exact ties counted by ``ties`` unless asked for other
    protocols; zero-shot classification on ``class_folders`` with ``templates``."""

    accelerator: Accelerator
    processor: object
    data: RunData
    batch_size: int
    num_workers: int
    ties: str
    test_every_validation: bool = False
    class_folders: list[ClassFolders] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)

    def encode_options(self) -> dict:
        """How the run embeds a split (:func:`~rsitr_hf.evaluation.encode_split`'s options)."""
        return {
            "batch_size": self.batch_size, "accelerator": self.accelerator, "num_workers": self.num_workers,
            "text_inputs": self.data.text_inputs,
        }  # fmt: skip

    def metrics(self, model: torch.nn.Module, split: str) -> dict[str, dict]:
        """Retrieval metrics of ``model`` on ``split`` of each of the run's datasets that has one, under the
        run's tie protocol: ``{dataset: metrics}``."""
        with self.accelerator.autocast():
            return {
                name: evaluate_retrieval(
                    model, rows, self.processor, self.ties, pixels=pixels, **self.encode_options()
                )
                for name, (rows, pixels) in self.data.evaluated(split).items()
            }

    def record(self, model: torch.nn.Module, split: str, state: TrainerState, recorded_as: str) -> dict:
        """Score ``split`` of every dataset (the run's tie protocol), record the evaluation in ``state`` (as
        ``recorded_as``, with each dataset's figures under ``by_dataset`` when there are several) and in the
        trackers; returns the mean over the datasets (``{}`` when none has the split)."""
        by_dataset = self.metrics(model, split)
        metrics = mean_metrics(list(by_dataset.values())) if by_dataset else {}
        entry = {"step": state.global_step, "epoch": state.epoch, "split": recorded_as, **metrics}
        logged = {f"{recorded_as}/{key}": value for key, value in metrics.items()}
        if len(by_dataset) > 1:
            entry["by_dataset"] = by_dataset
            logged.update(
                {f"{recorded_as}/{name}/{key}": value for name, found in by_dataset.items()
                 for key, value in found.items()}
            )  # fmt: skip
        state.evaluations.append(entry)
        self.accelerator.log(logged, step=state.global_step)
        return metrics


def validate(model: torch.nn.Module, evaluator: Evaluator, state: TrainerState, output_dir: Path) -> None:
    """Validation metrics of the current step (the mean over the run's datasets), recorded in ``state`` and
    the trackers; a better adapter than the best so far by that mean mR (or any, without a validation split)
    is saved to ``best_adapter/``. With ``test_every_validation``, the test metrics of the same step are
    recorded too (split ``test_monitor``), for the figures of a release that selected on test; they never
    choose the adapter."""
    accelerator = evaluator.accelerator
    metrics = evaluator.record(model, "validation", state, "validation")
    if evaluator.test_every_validation:
        evaluator.record(model, "test", state, "test_monitor")
    if "mR" not in metrics or state.best_mR is None or metrics["mR"] > state.best_mR:
        state.best_mR, state.best_step = metrics.get("mR"), state.global_step
        if accelerator.is_main_process:
            save_best(model, output_dir)
    accelerator.wait_for_everyone()


def class_folders_of(recipe: Recipe) -> list[ClassFolders]:
    """``evaluation.classification``'s datasets, read and checked when the run starts (not after training)."""
    settings = recipe.evaluation
    try:
        check_templates(settings.classification_templates)
        folders = [read_class_folders(f, settings.classification_names) for f in settings.classification]
        check_class_names(settings.classification_names, folders)
    except InputError as error:
        raise RecipeError(f"evaluation.classification: {error}") from None
    return folders


def test_selected(
    recipe: Recipe, model: torch.nn.Module, evaluator: Evaluator, state: TrainerState
) -> ScoredTests:
    """The selected adapter (loaded into ``model``) on the test split of each of the run's datasets and of
    ``evaluation.test_datasets``, once, recorded in ``state`` and the trackers. Every process takes part."""
    with evaluator.accelerator.main_process_first():  # the main process caches their pixels, the others reuse
        others = other_test_splits(recipe, evaluator.processor)
    own = evaluator.data.evaluated("test")
    with evaluator.accelerator.autocast():
        tested = score_tests(
            model,
            {**own, **others},
            list(own),
            evaluator.processor,
            evaluator.ties,
            **evaluator.encode_options(),
        )
    entry = {"step": state.best_step, "epoch": None, "split": "test", **tested.metrics}
    state.evaluations.append({**entry, **({"by_dataset": tested.by_dataset} if tested.by_dataset else {})})
    evaluator.accelerator.log({f"test/{k}": v for k, v in tested.metrics.items()}, step=state.global_step)
    return tested


def scene_classification(model: torch.nn.Module, base: torch.nn.Module, evaluator: Evaluator) -> list[dict]:
    """Top-1 / top-5 zero-shot accuracy of ``base`` (prompts as CLIP's tokens) and of the trained ``model``
    (prompts as its method's text inputs) on each class-folder dataset, and the trained model's retention of
    the base's top-1."""
    results = []
    base_inputs = TextInputs(evaluator.processor.tokenizer)
    for dataset in evaluator.class_folders:
        entry = {"dataset": str(dataset.root), "classes": len(dataset.folders), "images": len(dataset.files)}
        found = {}
        for name, scored, inputs in (
            ("base", base, base_inputs),
            ("adapted", model, evaluator.data.text_inputs),
        ):
            with evaluator.accelerator.autocast():
                result = evaluate_class_folders(
                    scored, evaluator.processor, dataset, evaluator.templates, evaluator.batch_size, inputs
                )
            found[name] = {"top1": result.top1, "top5": result.top5}
        base_top1 = found["base"]["top1"]
        retention = found["adapted"]["top1"] / base_top1 if base_top1 else None
        results.append({**entry, **found, "retention_top1": retention})
    return results
