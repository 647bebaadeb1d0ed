"""Retrieval losses on L2-normalised embeddings.

- :func:`hinge_triplet_loss`: the VSE++ bidirectional hinge, with the hardest in-batch negative
  (``max_violation=True``) or the sum over all negatives; reusable by every method.
- :func:`hmmc_loss`: PE-RSITR's hybrid multi-modal contrastive loss (docs/methods.md, PE-RSITR).
- :func:`multi_positive_infonce` and :func:`power_triplet_loss`: POSAPL's ``L_MA`` and ``L_PST``
  (docs/methods.md, POSAPL), summed by :func:`posapl_loss`.
- :func:`weighted_triplet_loss`: HarMA's focal-weighted triplet, added to the multi-positive ITC with its
  trainable temperature by :func:`harma_loss` (docs/methods.md, HarMA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negatives_mask(batch_size: int, image_ids: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``(B, B)`` bool, True where item ``j`` may serve as a negative for item ``i``.

    Never the pair itself; with ``image_ids``, never an item of the same image.
    """
    if image_ids is None:
        return ~torch.eye(batch_size, dtype=torch.bool, device=device)
    image_ids = image_ids.to(device)
    return image_ids[:, None] != image_ids[None, :]


def hinge_triplet_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    margin: float = 0.2,
    max_violation: bool = True,
    negatives: torch.Tensor | None = None,
    power: float = 1.0,
) -> torch.Tensor:
    """Bidirectional hinge loss of ``B`` pairs ``(anchors[i], positives[i])``, summed over the batch.

    With ``S = anchors @ positives.T`` (cosine similarities of ``(B, D)`` L2-normalised inputs):
    ``sum_i [ agg_j (m + S[i, j] - S[i, i])_+^p  +  agg_j (m + S[j, i] - S[i, i])_+^p ]`` over the ``j``
    allowed by ``negatives`` (``(B, B)`` bool, default: all ``j != i``), where ``agg`` is ``max``
    (hardest negative, VSE++) or ``sum``, and ``p`` is ``power``.
    """
    scores = anchors @ positives.T
    if negatives is None:
        negatives = negatives_mask(scores.shape[0], None, scores.device)
    diagonal = scores.diagonal()
    cost_positives = (margin + scores - diagonal[:, None]).clamp(min=0).pow(power).masked_fill(~negatives, 0)
    cost_anchors = (margin + scores - diagonal[None, :]).clamp(min=0).pow(power).masked_fill(~negatives, 0)
    if max_violation:
        return cost_positives.max(dim=1).values.sum() + cost_anchors.max(dim=0).values.sum()
    return cost_positives.sum() + cost_anchors.sum()


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


def multi_positive_infonce(
    image: torch.Tensor,
    text: torch.Tensor,
    image_ids: torch.Tensor,
    logit_scale: torch.Tensor,
    exponentiate_scale: bool = True,
) -> torch.Tensor:
    """POSAPL's ``L_MA``: symmetric InfoNCE in which every caption of the same image is a positive.

    Logits are ``scale * image @ text.T`` for ``(B, D)`` L2-normalised embeddings; the targets of row
    ``i`` are the items with ``image_ids[i]``, normalised to sum to 1. ``scale`` is
    ``exp(logit_scale)`` as in CLIP (default), or the raw ``logit_scale`` with
    ``exponentiate_scale=False``, which is what the POSAPL release did ("paper-faithful"). Returns the
    mean over rows of both directions, halved.
    """
    scale = logit_scale.exp() if exponentiate_scale else logit_scale
    logits = scale * image @ text.T
    same = (image_ids[:, None] == image_ids[None, :]).to(logits.dtype)
    targets = same / same.sum(dim=1, keepdim=True)
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


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
