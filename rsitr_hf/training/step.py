"""One training step: the loss of a batch, as the recipe's loss declares it
(:mod:`rsitr_hf.objectives.table`), and the log of the losses, read from the device every few steps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from ..data.preprocessing import ImageBatchTransform
from ..objectives.table import LossSpec
from .checkpoints import TrainerState

LOSS_READ_EVERY = 10  # optimiser steps between reads of the loss from the device (each read synchronises)


@dataclass
class TrainingStep:
    """The loss of one training batch (as collated by ``RetrievalCollator``, on the device): the uint8 pixels
    become ``pixel_values`` on the device (augmentation drawn from ``(seed, epoch, pair_index)``, then
    normalisation), and the loss computes the rest with its ``options``."""

    model: torch.nn.Module
    loss: LossSpec
    options: Any
    images: ImageBatchTransform

    def __call__(self, batch: dict, epoch: int) -> torch.Tensor:
        pixel_values = self.images(batch["pixels"], batch["pair_index"], epoch)
        return self.loss.compute(self.model, batch, pixel_values, self.options)


@dataclass
class LossLog:
    """Losses of recent optimiser steps, read from the device together every ``LOSS_READ_EVERY`` steps
    (reading one synchronises the host with the device, which would stall the next step), with the wall
    time per step of each window between reads."""

    pending: list = field(default_factory=list)  # (step, loss tensor on the device)
    window_started: float = field(default_factory=time.perf_counter)
    seconds_per_step: list = field(default_factory=list)

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.pending.append((step, loss))

    @property
    def due(self) -> bool:
        return len(self.pending) >= LOSS_READ_EVERY

    def read(self, state: TrainerState, accelerator: Accelerator, learning_rate: float, progress) -> None:
        """Record the pending losses in ``state`` and the trackers, and close the timing window."""
        if self.pending:
            values = torch.stack([loss for _, loss in self.pending]).float().tolist()
            self.seconds_per_step.append((time.perf_counter() - self.window_started) / len(self.pending))
            for (step, _), value in zip(self.pending, values, strict=True):
                state.train_loss.append({"step": step, "loss": value})
                accelerator.log({"train/loss": value}, step=step)
            accelerator.log({"train/lr": learning_rate}, step=state.global_step)
            progress.set_postfix(loss=f"{values[-1]:.3f}", best_mR=state.best_mR)
            self.pending.clear()
        self.restart()

    def restart(self) -> None:
        self.window_started = time.perf_counter()
