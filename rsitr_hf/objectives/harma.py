"""HarMA's loss (docs/methods.md, HarMA), declared in the loss table as ``harma``: the multi-positive ITC
with the adapter's trainable temperature plus the focal-weighted triplet, over the batch of every
process."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..tuners.harma import trainable_temperature
from ..utils.config import NON_NEGATIVE, POSITIVE, option
from ..utils.distributed import gather_with_gradient
from .losses import multi_positive_infonce, negatives_mask
from .table import LossSpec, register_loss
from .views import pair_embeddings


def weighted_triplet_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    margin: float = 0.2,
    gamma: float = 2.0,
) -> torch.Tensor:
    """HarMA's triplet: every violation ``c = (m + S[i, j] - S[i, i])_+`` (image ``i`` against caption ``j``)
    and ``c = (m + S[i, j] - S[j, j])_+`` (caption ``j`` against image ``i``) is weighted by
    ``(1 - exp(-c)) ** gamma`` (the weight is differentiated too), summed over the ``B x B`` pairs and
    halved. ``S = image @ text.T`` of ``(B, D)`` L2-normalised embeddings, no temperature. The positives are
    the diagonal only; with ``image_ids``, items of the same image are not negatives either."""
    scores = image @ text.T
    negatives = negatives_mask(scores.shape[0], image_ids, scores.device)
    diagonal = scores.diagonal()
    total = scores.new_zeros(())
    for positives in (diagonal[:, None], diagonal[None, :]):
        violation = (margin + scores - positives).clamp(min=0).masked_fill(~negatives, 0)
        total = total + ((1 - torch.exp(-violation)).pow(gamma) * violation).sum()
    return total / 2


def harma_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    image_ids: torch.Tensor,
    temperature: torch.Tensor,
    margin: float = 0.2,
    gamma: float = 2.0,
    mask_same_image: bool = False,
) -> torch.Tensor:
    """HarMA's loss, 1:1: the multi-positive ITC with logits ``image @ text.T / temperature`` (the adapter's
    trainable temperature, not CLIP's ``logit_scale``) plus :func:`weighted_triplet_loss`. Callers pass the
    batch gathered from every process (:func:`rsitr_hf.utils.distributed.gather_with_gradient`), as the
    release does. ``mask_same_image=True`` keeps captions of the same image out of the triplet's negatives
    (the release counts them as negatives; the ITC always treats them as positives)."""
    itc = multi_positive_infonce(image, text, image_ids, 1 / temperature, exponentiate_scale=False)
    negatives_ids = image_ids if mask_same_image else None
    return itc + weighted_triplet_loss(image, text, negatives_ids, margin, gamma)


@dataclass
class HarMAOptions:
    """HarMA's options (the recipe's ``loss`` section); the release's values but for ``mask_same_image``."""

    margin: float = option(0.2, "triplet margin (release: 0.2)", valid=NON_NEGATIVE)
    power: float = option(
        2.0, "exponent gamma of the triplet weight (1 - exp(-c)) (release: 2)", valid=POSITIVE
    )
    mask_same_image: bool = option(
        True, "pairs of the same image are never triplet negatives (false: the release's behaviour)"
    )


def harma_objective(
    model: nn.Module, batch: dict, pixel_values: torch.Tensor, options: HarMAOptions
) -> torch.Tensor:
    """HarMA's loss of a training batch: one view, gathered from every process as the release does, with
    the temperature of the model's HarMA adapter."""
    image, text = pair_embeddings(model, pixel_values, batch["text"])
    return harma_loss(
        gather_with_gradient(image), gather_with_gradient(text), gather_with_gradient(batch["image_ids"]),
        trainable_temperature(model), options.margin, options.power, options.mask_same_image,
    )  # fmt: skip


HARMA = register_loss(
    LossSpec(
        name="harma",
        summary="HarMA's multi-positive ITC with the adapter's temperature + weighted triplet, over every "
        "process's batch (needs a HarMA adapter)",
        compute=harma_objective,
        options=HarMAOptions,
    )
)
