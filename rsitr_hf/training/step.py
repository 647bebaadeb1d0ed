"""One training step: the loss of a batch (HMMC over clean and augmented views; POSAPL's loss over one view
with its POS inputs; HarMA's over one view gathered from every process, with the adapter's temperature), and
the log of the losses, read from the device every few steps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator

from ..data.preprocessing import ImageBatchTransform
from ..objectives import encode_views, harma_loss, hmmc_loss, posapl_loss, unwrap_clip
from ..tuners.harma import trainable_temperature
from ..utils.distributed import gather_with_gradient
from .checkpoints import TrainerState
from .recipe import LossRecipe

LOSS_READ_EVERY = 10  # optimiser steps between reads of the loss from the device (each read synchronises)
POS_INPUTS = ("pos_input_ids", "pos_tag_ids")


@dataclass
class TrainingStep:
    """The loss of one training batch (as collated by ``RetrievalCollator``, on the device).

    The uint8 pixels become ``pixel_values`` on the device (augmentation drawn from ``(seed, epoch,
    pair_index)``, then normalisation); HMMC encodes clean and token-dropout views of both towers, POSAPL
    one view with its POS inputs, HarMA one view.
    """

    model: torch.nn.Module
    loss: LossRecipe
    images: ImageBatchTransform
    token_dropout: float

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
        pos_inputs = {key: batch[key] for key in POS_INPUTS if key in batch}
        output = self.model(
            pixel_values=pixel_values, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            return_dict=True, **pos_inputs,
        )  # fmt: skip
        image, text = output.image_embeds.float(), output.text_embeds.float()
        if options.name == "harma":  # over the batch of every process, as the release
            image_ids = gather_with_gradient(batch["image_ids"])
            return harma_loss(
                gather_with_gradient(image), gather_with_gradient(text), image_ids,
                trainable_temperature(self.model), options.margin, options.power, options.mask_same_image,
            )  # fmt: skip
        return posapl_loss(
            image, text, batch["image_ids"], unwrap_clip(self.model).logit_scale, options.exponentiate_scale,
            options.margin, options.power, options.mask_same_image,
        )  # fmt: skip


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
