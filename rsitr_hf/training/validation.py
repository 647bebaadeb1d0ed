"""Evaluation inside a training run: retrieval metrics of the current model on a split of the run's data
(sharded over the processes), validation, which keeps the best adapter so far (and, when asked, scores
test beside it without using it), and zero-shot scene classification of the final model against the
base."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from ..data.preprocessing import pos_text_inputs
from ..evaluation import evaluate_by_ties, mean_metrics
from ..evaluation.classification import (
    ClassFolders,
    check_class_names,
    check_templates,
    evaluate_class_folders,
    read_class_folders,
)
from ..utils.errors import InputError
from .checkpoints import TrainerState, save_best
from .data import RunData
from .recipe import Recipe, RecipeError


@dataclass
class Evaluator:
    """How a run scores its model: on ``data``'s splits, images from its pixel sources, captions with the POS
    inputs its method takes, ``batch_size`` per process, exact ties counted by ``ties`` unless asked for
    other protocols; zero-shot classification on ``class_folders`` with ``templates``."""

    accelerator: Accelerator
    processor: object
    data: RunData
    batch_size: int
    num_workers: int
    ties: str
    test_every_validation: bool = False
    class_folders: list[ClassFolders] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)

    def text_options(self, rows) -> dict:
        """The caption column and text inputs of ``rows`` for a method with POS inputs (else none)."""
        if self.data.pos_mode is None:
            return {}
        return {  # POSAPL encodes the normalised captions with their POS inputs
            "caption_column": "pos_captions",
            "text_inputs": pos_text_inputs(rows, self.processor.tokenizer, self.data.pos_mode),
        }

    def metrics(
        self, model: torch.nn.Module, split: str, protocols: tuple[str, ...] | None = None
    ) -> dict[str, dict[str, dict]]:
        """Retrieval metrics of ``model`` on ``split`` of each of the run's datasets that has one, under each
        tie protocol of ``protocols`` (default: the run's own): ``{dataset: {protocol: metrics}}``."""
        return {
            name: self.metrics_of(model, rows, pixels, protocols)
            for name, (rows, pixels) in self.data.evaluated(split).items()
        }

    def metrics_of(self, model: torch.nn.Module, rows, pixels, protocols: tuple[str, ...] | None = None):
        """Retrieval metrics of any split ``rows`` (of the RSITR schema) with its ``pixels``."""
        with self.accelerator.autocast():
            return evaluate_by_ties(
                model,
                rows,
                self.processor,
                protocols or (self.ties,),
                batch_size=self.batch_size,
                accelerator=self.accelerator,
                pixels=pixels,
                num_workers=self.num_workers,
                **self.text_options(rows),
            )

    def record(self, model: torch.nn.Module, split: str, state: TrainerState, recorded_as: str) -> dict:
        """Score ``split`` of every dataset (the run's tie protocol), record the evaluation in ``state`` (as
        ``recorded_as``, with each dataset's figures under ``by_dataset`` when there are several) and in the
        trackers; returns the mean over the datasets (``{}`` when none has the split)."""
        by_dataset = {name: found[self.ties] for name, found in self.metrics(model, split).items()}
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


def zero_shot_classification(
    model: torch.nn.Module, base: torch.nn.Module, evaluator: Evaluator
) -> list[dict]:
    """Top-1 / top-5 zero-shot accuracy of ``base`` and of the trained ``model`` on each class-folder dataset,
    and the trained model's retention of the base's top-1 (``None`` when the method's text tower needs POS
    inputs, which prompts do not have)."""
    results = []
    for dataset in evaluator.class_folders:
        entry = {"dataset": str(dataset.root), "classes": len(dataset.folders), "images": len(dataset.files)}
        if evaluator.data.pos_mode is not None:
            results.append({**entry, "skipped": "the method's text tower needs POS inputs"})
            continue
        found = {}
        for name, scored in (("base", base), ("adapted", model)):
            with evaluator.accelerator.autocast():
                result = evaluate_class_folders(
                    scored, evaluator.processor, dataset, evaluator.templates, evaluator.batch_size
                )
            found[name] = {"top1": result.top1, "top5": result.top5}
        base_top1 = found["base"]["top1"]
        retention = found["adapted"]["top1"] / base_top1 if base_top1 else None
        results.append({**entry, **found, "retention_top1": retention})
    return results
