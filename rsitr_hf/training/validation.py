"""Evaluation inside a training run: retrieval metrics of the current model on a split of the run's data
(sharded over the processes), and validation, which keeps the best adapter so far (and, when asked, scores
test beside it without using it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from ..data.preprocessing import pos_text_inputs
from ..evaluation import evaluate_by_ties
from .checkpoints import TrainerState, save_best
from .data import RunData


@dataclass
class Evaluator:
    """How a run scores its model: on ``data``'s splits, images from its pixel sources, captions with the POS
    inputs its method takes, ``batch_size`` per process, exact ties counted by ``ties`` unless asked for
    other protocols."""

    accelerator: Accelerator
    processor: object
    data: RunData
    batch_size: int
    num_workers: int
    ties: str
    test_every_validation: bool = False

    def text_options(self, split: str) -> dict:
        """The caption column and text inputs of ``split`` for a method with POS inputs (else none)."""
        if self.data.pos_mode is None:
            return {}
        return {  # POSAPL encodes the normalised captions with their POS inputs
            "caption_column": "pos_captions",
            "text_inputs": pos_text_inputs(
                self.data.dataset[split], self.processor.tokenizer, self.data.pos_mode
            ),
        }

    def metrics(
        self, model: torch.nn.Module, split: str, protocols: tuple[str, ...] | None = None
    ) -> dict[str, dict]:
        """Retrieval metrics of ``model`` on ``split`` under each tie protocol of ``protocols`` (default: the
        run's own)."""
        with self.accelerator.autocast():
            return evaluate_by_ties(
                model,
                self.data.dataset[split],
                self.processor,
                protocols or (self.ties,),
                batch_size=self.batch_size,
                accelerator=self.accelerator,
                pixels=self.data.pixels[split],
                num_workers=self.num_workers,
                **self.text_options(split),
            )


def validate(model: torch.nn.Module, evaluator: Evaluator, state: TrainerState, output_dir: Path) -> None:
    """Validation metrics of the current step, recorded in ``state`` and the trackers; a better adapter than
    the best so far (or any, without a validation split) is saved to ``best_adapter/``. With
    ``test_every_validation``, the test metrics of the same step are recorded too (split ``test_monitor``),
    for the figures of a release that selected on test; they never choose the adapter."""
    accelerator = evaluator.accelerator
    has_validation = len(evaluator.data.dataset["validation"]) > 0
    metrics = evaluator.metrics(model, "validation")[evaluator.ties] if has_validation else {}
    state.evaluations.append(
        {"step": state.global_step, "epoch": state.epoch, "split": "validation", **metrics}
    )
    accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=state.global_step)
    if evaluator.test_every_validation:
        monitored = evaluator.metrics(model, "test")[evaluator.ties]
        state.evaluations.append(
            {"step": state.global_step, "epoch": state.epoch, "split": "test_monitor", **monitored}
        )
        accelerator.log({f"test_monitor/{k}": v for k, v in monitored.items()}, step=state.global_step)
    if "mR" not in metrics or state.best_mR is None or metrics["mR"] > state.best_mR:
        state.best_mR, state.best_step = metrics.get("mR"), state.global_step
        if accelerator.is_main_process:
            save_best(model, output_dir)
    accelerator.wait_for_everyone()
