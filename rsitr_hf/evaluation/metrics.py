"""Recall@K for image-text retrieval, by the protocol every RSITR paper uses (METHODS.md §1).

Exact ties between the correct item and items of other images (identical captions of two images, as in
UCM-Captions, where 868 of the 1,050 test captions are shared) are handled by one of ``TIE_PROTOCOLS``:

- ``pessimistic`` (the default): an item of another image scoring exactly as high as the correct one counts
  as ranked above it. A constant similarity matrix scores 0, and a caption shared with another image never
  gives a hit to the wrong image nor hides behind the right one.
- ``optimistic``: only items scoring strictly higher count; with ``pessimistic`` it bounds every other
  way of breaking ties.
- ``reference``: the field's released code (GaLR / PE-RSITR ``i2t``/``t2i``, POSAPL / HarMA ``itm_eval``),
  literally: each query's items are ordered by ``numpy.argsort(scores)[::-1]`` (numpy's default sort of
  the ascending order, reversed) and the rank is the position of the correct item (of the best of an
  image's captions). Identical similarity matrices give the papers' numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

RECALL_KS = (1, 5, 10)
TIE_PROTOCOLS = ("pessimistic", "optimistic", "reference")
METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")


def as_tensor(values, dtype=None) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu() if dtype is None else values.detach().cpu().to(dtype)
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def retrieval_ranks(
    similarity: torch.Tensor | np.ndarray,
    caption_image_ids: Sequence[int] | torch.Tensor | np.ndarray,
    image_ids: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    ties: str = "pessimistic",
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks of the correct item for each image query and each caption query.

    Args:
        similarity: ``(num_images, num_captions)`` scores, higher is more similar.
        caption_image_ids: ``(num_captions,)`` the image id of each caption.
        image_ids: ``(num_images,)`` the id of each row; ``arange(num_images)`` when omitted.
        ties: one of ``TIE_PROTOCOLS`` (see the module docstring).

    Returns:
        ``(i2t_ranks, t2i_ranks)`` of shapes ``(num_images,)`` and ``(num_captions,)``. The rank of an
        image query is that of its best-ranked own caption; the rank of a caption query is that of its
        own image. Each counts the items of other images scoring at least as high (``pessimistic``),
        strictly higher (``optimistic``), or placed before it by the field's sort (``reference``).
    """
    if ties not in TIE_PROTOCOLS:
        raise ValueError(f"ties must be one of {list(TIE_PROTOCOLS)}, got {ties!r}")
    scores = as_tensor(similarity, torch.float64)
    caption_ids = as_tensor(caption_image_ids, torch.int64)
    num_images, num_captions = scores.shape
    row_ids = torch.arange(num_images) if image_ids is None else as_tensor(image_ids, torch.int64)
    if caption_ids.shape != (num_captions,) or row_ids.shape != (num_images,):
        raise ValueError(
            f"similarity is {tuple(scores.shape)} but got {tuple(caption_ids.shape)} caption ids and "
            f"{tuple(row_ids.shape)} image ids; expected ({num_captions},) and ({num_images},)"
        )
    if len(torch.unique(row_ids)) != num_images:
        raise ValueError("image_ids must be unique")
    own = caption_ids[None, :] == row_ids[:, None]
    unmatched = (~own.any(dim=0)).nonzero().flatten()
    if len(unmatched):
        raise ValueError(
            f"{len(unmatched)} caption(s) belong to no image row, e.g. caption {unmatched[0].item()} with "
            f"image id {caption_ids[unmatched[0]].item()}"
        )
    captionless = (~own.any(dim=1)).nonzero().flatten()
    if len(captionless):
        raise ValueError(f"image id {row_ids[captionless[0]].item()} has no caption in the matrix")

    if ties == "reference":
        return reference_ranks(similarity, own.numpy())
    at_least = torch.ge if ties == "pessimistic" else torch.gt
    best_own = scores.masked_fill(~own, float("-inf")).amax(dim=1)
    i2t_ranks = (at_least(scores, best_own[:, None]) & ~own).sum(dim=1)
    own_row = own.to(torch.int64).argmax(dim=0)
    own_score = scores[own_row, torch.arange(num_captions)]
    t2i_ranks = (at_least(scores, own_score[None, :]) & ~own).sum(dim=0)
    return i2t_ranks, t2i_ranks


def reference_ranks(similarity, own: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranks the field's evaluation code computes, on ``similarity`` in its own dtype (the order numpy
    gives tied scores depends on it): per image row and per caption column, the items ordered by
    ``np.argsort(scores)[::-1]``; an image's rank is the best position of its own captions, a caption's the
    position of its image."""
    if isinstance(similarity, torch.Tensor):
        if similarity.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds its values exactly
            similarity = similarity.float()
        similarity = similarity.detach().cpu().numpy()
    # the evaluate module's numpy procedure (imported here: that module loads `evaluate` and `datasets`)
    from .rsitr_retrieval.rsitr_retrieval import reference_ranks as numpy_reference_ranks

    i2t, t2i = numpy_reference_ranks(np.asarray(similarity), own)
    return torch.from_numpy(i2t), torch.from_numpy(t2i)


def test_results(by_ties: dict[str, dict[str, float]], used: str) -> dict:
    """``metrics.json``'s test entries: ``test`` (the metrics under the tie protocol ``used``) and
    ``test_ties`` (``used`` and the metrics under each protocol of ``by_ties``)."""
    return {"test": by_ties[used], "test_ties": {"used": used, **by_ties}}


def retrieval_metrics(
    similarity: torch.Tensor | np.ndarray,
    caption_image_ids: Sequence[int] | torch.Tensor | np.ndarray,
    image_ids: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    ties: str = "pessimistic",
) -> dict[str, float]:
    """R@1/5/10 in both directions and their mean mR, in percent.

    ``similarity`` is ``(num_images, num_captions)``, ``caption_image_ids[j]`` the image of caption
    ``j``, ``image_ids[i]`` the id of row ``i`` (default ``arange(num_images)``), ``ties`` one of
    ``TIE_PROTOCOLS``. Returns a dict with the keys ``i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, mR``.
    """
    i2t_ranks, t2i_ranks = retrieval_ranks(similarity, caption_image_ids, image_ids, ties)
    metrics = {}
    for direction, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        for k in RECALL_KS:
            metrics[f"{direction}_r{k}"] = 100.0 * (ranks < k).double().mean().item()
    metrics["mR"] = sum(metrics.values()) / len(metrics)
    return metrics


def metrics_table(rows: dict[str, dict[str, float]], label: str = "model") -> str:
    """A markdown table: one row per named result, one column per metric key ("-" where missing)."""
    header = f"| {label} | " + " | ".join(METRIC_KEYS) + " |"
    rule = "|---|" + "---|" * len(METRIC_KEYS)
    body = [
        f"| {name} | "
        + " | ".join(f"{metrics[key]:.2f}" if key in metrics else "-" for key in METRIC_KEYS)
        + " |"
        for name, metrics in rows.items()
    ]
    return "\n".join([header, rule, *body])
