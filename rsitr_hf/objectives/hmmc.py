"""PE-RSITR's hybrid multi-modal contrastive loss (HMMC, docs/methods.md, PE-RSITR), declared in the loss
table as ``hmmc``: the hinge between clean images and captions, and between each tower's clean and augmented
views (token dropout, :func:`~rsitr_hf.objectives.views.encode_views`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..utils.config import FRACTION, NON_NEGATIVE, option
from .losses import hinge_triplet_loss, negatives_mask
from .table import LossSpec, register_loss
from .views import encode_views


def hmmc_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    image_aug: torch.Tensor,
    text_aug: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    margin: float = 0.2,
    mask_same_image: bool = True,
    max_violation: bool = True,
) -> torch.Tensor:
    """HMMC: ``L(v, t) + L(v, v') + L(t, t')`` with :func:`hinge_triplet_loss` (weights 1:1:1).

    Args:
        image, text: ``(B, D)`` clean L2-normalised embeddings of ``B`` image-caption pairs.
        image_aug, text_aug: ``(B, D)`` augmented views of the same items.
        image_ids: ``(B,)`` image of each pair. With ``mask_same_image`` (default, this project's
            recipe), items of the same image are never negatives of each other; without ids or with
            ``mask_same_image=False`` every other item is a negative, as in the paper's release.
        margin: hinge margin (paper: 0.2).
        max_violation: hardest negative only (paper) or sum over negatives.

    Returns:
        The scalar loss, summed (not averaged) over the batch.
    """
    negatives = negatives_mask(image.shape[0], image_ids if mask_same_image else None, image.device)
    return sum(
        hinge_triplet_loss(a, b, margin, max_violation, negatives)
        for a, b in ((image, text), (image, image_aug), (text, text_aug))
    )


@dataclass
class HMMCOptions:
    """HMMC's options (the recipe's ``loss`` section)."""

    margin: float = option(0.2, "hinge margin (paper: 0.2)", valid=NON_NEGATIVE)
    max_violation: bool = option(True, "hardest negative only (false: sum over negatives)")
    mask_same_image: bool = option(
        True, "pairs of the same image are never negatives (false: the release's behaviour)"
    )
    token_dropout: float = option(
        0.2, "dropout on the token embeddings entering each tower, for the augmented views", valid=FRACTION
    )


def hmmc_objective(
    model: nn.Module, batch: dict, pixel_values: torch.Tensor, options: HMMCOptions
) -> torch.Tensor:
    """HMMC of a training batch: clean and augmented views of both towers."""
    views = encode_views(model, pixel_values, batch["text"], options.token_dropout)
    return hmmc_loss(
        views.image, views.text, views.image_aug, views.text_aug, image_ids=batch["image_ids"],
        margin=options.margin, max_violation=options.max_violation, mask_same_image=options.mask_same_image,
    )  # fmt: skip


HMMC = register_loss(
    LossSpec(
        name="hmmc",
        summary="PE-RSITR's hybrid multi-modal contrastive loss (clean and token-dropout views)",
        compute=hmmc_objective,
        options=HMMCOptions,
    )
)
