"""The terms the retrieval losses are built of, on L2-normalised embeddings.

- :func:`negatives_mask`: which in-batch items are negatives of which;
- :func:`hinge_triplet_loss`: the VSE++ bidirectional hinge, with the hardest in-batch negative
  (``max_violation=True``) or the sum over all negatives (HMMC's terms, POSAPL's ``L_PST``);
- :func:`contrastive_loss`: symmetric InfoNCE over a batch's logits, the other captions of a pair's image
  positives (:func:`multi_positive_infonce`: POSAPL's ``L_MA``, HarMA's ITC) or left out (the demo's
  pretraining of its base).

The losses themselves, each declared in the loss table beside its code: :mod:`.hmmc`, :mod:`.posapl`,
:mod:`.harma`.
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


SAME_IMAGE = ("positives", "excluded")


def contrastive_loss(
    logits: torch.Tensor, image_ids: torch.Tensor, same_image: str = "positives"
) -> torch.Tensor:
    """Symmetric InfoNCE over ``(B, B)`` image-to-text ``logits`` of ``B`` pairs (row ``i``: image ``i``
    against every caption), the mean of both directions.

    ``same_image`` says what the other captions of a pair's image are: ``"positives"`` (every caption of the
    same image shares the target, normalised to sum to 1: POSAPL's ``L_MA``, HarMA's ITC) or ``"excluded"``
    (the pair's own caption is the target and the others of its image are left out of the softmax: CLIP's
    loss without false negatives, the demo's pretraining).
    """
    if same_image not in SAME_IMAGE:
        raise ValueError(f"same_image must be one of {SAME_IMAGE}, got {same_image!r}")
    same = image_ids[:, None] == image_ids[None, :]
    if same_image == "excluded":
        logits = logits.masked_fill(same & ~torch.eye(len(logits), dtype=torch.bool), float("-inf"))
        targets = torch.arange(len(logits))
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    shares = same.to(logits.dtype)
    targets = shares / shares.sum(dim=1, keepdim=True)
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def multi_positive_infonce(
    image: torch.Tensor,
    text: torch.Tensor,
    image_ids: torch.Tensor,
    logit_scale: torch.Tensor,
    exponentiate_scale: bool = True,
) -> torch.Tensor:
    """POSAPL's ``L_MA``: :func:`contrastive_loss` of logits ``scale * image @ text.T`` (``(B, D)``
    L2-normalised embeddings) in which every caption of the same image is a positive. ``scale`` is
    ``exp(logit_scale)`` as in CLIP (default), or the raw ``logit_scale`` with ``exponentiate_scale=False``,
    which is what the POSAPL release did ("paper-faithful")."""
    scale = logit_scale.exp() if exponentiate_scale else logit_scale
    return contrastive_loss(scale * image @ text.T, image_ids, "positives")
