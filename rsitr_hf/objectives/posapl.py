"""POSAPL's loss (docs/methods.md, POSAPL), declared in the loss table as ``posapl``: the multi-positive
InfoNCE ``L_MA`` with CLIP's ``logit_scale`` plus the power-scaled triplet ``L_PST``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..utils.config import NON_NEGATIVE, POSITIVE, option
from .losses import hinge_triplet_loss, multi_positive_infonce, negatives_mask
from .table import LossSpec, register_loss
from .views import pair_embeddings, unwrap_clip


def power_triplet_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    margin: float = 0.1,
    power: float = 2.0,
) -> torch.Tensor:
    """POSAPL's ``L_PST``: ``(m + s_neg - s_pos)_+ ** power`` over every in-batch negative, both
    directions, summed and halved. With ``image_ids``, items of the same image are not negatives."""
    negatives = negatives_mask(image.shape[0], image_ids, image.device)
    return hinge_triplet_loss(image, text, margin, max_violation=False, negatives=negatives, power=power) / 2


def posapl_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    image_ids: torch.Tensor,
    logit_scale: torch.Tensor,
    exponentiate_scale: bool = True,
    margin: float = 0.1,
    power: float = 2.0,
    mask_same_image: bool = True,
) -> torch.Tensor:
    """``L_MA + L_PST`` (docs/methods.md, POSAPL). ``L_MA`` always treats captions of the same image as
    positives; ``mask_same_image=False`` makes every other in-batch item a negative of ``L_PST``, as in the
    release."""
    negatives_ids = image_ids if mask_same_image else None
    return multi_positive_infonce(
        image, text, image_ids, logit_scale, exponentiate_scale
    ) + power_triplet_loss(image, text, negatives_ids, margin, power)


@dataclass
class POSAPLOptions:
    """POSAPL's options (the recipe's ``loss`` section); the defaults are the release's but for
    ``mask_same_image`` and ``exponentiate_scale``, this project's choices."""

    margin: float = option(0.1, "triplet margin (release: 0.1)", valid=NON_NEGATIVE)
    power: float = option(2.0, "exponent of the triplet hinge (release: 2)", valid=POSITIVE)
    mask_same_image: bool = option(
        True, "pairs of the same image are never triplet negatives (false: the release's behaviour)"
    )
    exponentiate_scale: bool = option(
        True, "InfoNCE scale exp(logit_scale) as in CLIP (false: the release's raw logit_scale)"
    )


def posapl_objective(
    model: nn.Module, batch: dict, pixel_values: torch.Tensor, options: POSAPLOptions
) -> torch.Tensor:
    """POSAPL's loss of a training batch, over one view with the method's text inputs."""
    image, text = pair_embeddings(model, pixel_values, batch["text"])
    return posapl_loss(
        image, text, batch["image_ids"], unwrap_clip(model).logit_scale, options.exponentiate_scale,
        options.margin, options.power, options.mask_same_image,
    )  # fmt: skip


POSAPL = register_loss(
    LossSpec(
        name="posapl",
        summary="POSAPL's multi-positive InfoNCE + power-scaled triplet",
        compute=posapl_objective,
        options=POSAPLOptions,
    )
)
