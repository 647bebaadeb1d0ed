"""Recall@K for image-text retrieval, by the protocol every RSITR paper uses (``docs/evaluation.md``).

The ranking itself is :mod:`rsitr_hf.evaluation.rsitr_retrieval.ranking` (numpy), the one the ``evaluate``
module ships; this module hands it tensors and returns tensors. Exact ties between the correct item and
items of other images (identical captions of two images, as in UCM-Captions, where 868 of the 1,050 test
captions are shared) are handled by one of ``TIE_PROTOCOLS``:

- ``pessimistic`` (the default): an item of another image scoring exactly as high as the correct one counts
  as ranked above it. A constant similarity matrix scores 0, and a caption shared with another image never
  gives a hit to the wrong image nor hides behind the right one.
- ``optimistic``: only items scoring strictly higher count; with ``pessimistic`` it bounds every other
  way of breaking ties.
- ``reference``: the field's released code (GaLR / PE-RSITR ``i2t``/``t2i``, POSAPL / HarMA ``itm_eval``),
  literally: each query's items are ordered by ``numpy.argsort(scores)[::-1]`` (numpy's default sort of
  the ascending order, reversed) and the rank is the position of the correct item (of the best of an
  image's captions), in the matrix's own dtype. Identical similarity matrices give the papers' numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .rsitr_retrieval.ranking import RECALL_KS, TIE_PROTOCOLS, recall_metrics
from .rsitr_retrieval.ranking import retrieval_ranks as numpy_retrieval_ranks

METRIC_KEYS = tuple(f"{direction}_r{k}" for direction in ("i2t", "t2i") for k in RECALL_KS) + ("mR",)

IdSequence = Sequence[int] | torch.Tensor | np.ndarray

__all__ = [
    "METRIC_KEYS", "RECALL_KS", "TIE_PROTOCOLS", "metrics_table", "retrieval_metrics", "retrieval_ranks",
    "test_results",
]  # fmt: skip


def as_numpy(values) -> np.ndarray:
    """``values`` (a tensor on any device and of any dtype, or array-like) as a numpy array; bfloat16, which
    numpy lacks, becomes float32 (which holds its values exactly)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return (values.float() if values.dtype == torch.bfloat16 else values).numpy()
    return np.asarray(values)


def retrieval_ranks(
    similarity: torch.Tensor | np.ndarray,
    caption_image_ids: IdSequence,
    image_ids: IdSequence | None = None,
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
    scores = as_numpy(similarity)
    rows = np.arange(scores.shape[0]) if image_ids is None else as_numpy(image_ids)
    i2t, t2i = numpy_retrieval_ranks(scores, as_numpy(caption_image_ids), rows, ties)
    return torch.from_numpy(i2t), torch.from_numpy(t2i)


def retrieval_metrics(
    similarity: torch.Tensor | np.ndarray,
    caption_image_ids: IdSequence,
    image_ids: IdSequence | None = None,
    ties: str = "pessimistic",
) -> dict[str, float]:
    """R@1/5/10 in both directions and their mean mR, in percent.

    ``similarity`` is ``(num_images, num_captions)``, ``caption_image_ids[j]`` the image of caption
    ``j``, ``image_ids[i]`` the id of row ``i`` (default ``arange(num_images)``), ``ties`` one of
    ``TIE_PROTOCOLS``. Returns a dict with the keys ``i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, mR``.
    """
    i2t_ranks, t2i_ranks = retrieval_ranks(similarity, caption_image_ids, image_ids, ties)
    return recall_metrics(i2t_ranks.numpy(), t2i_ranks.numpy())


def test_results(by_ties: dict[str, dict[str, float]], used: str) -> dict:
    """``metrics.json``'s test entries: ``test`` (the metrics under the tie protocol ``used``) and
    ``test_ties`` (``used`` and the metrics under each protocol of ``by_ties``)."""
    return {"test": by_ties[used], "test_ties": {"used": used, **by_ties}}


def mean_metrics(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """The key-wise mean of several results (each dataset counted once), over the keys they all have."""
    keys = [key for key in results[0] if all(key in result for result in results)]
    return {key: float(np.mean([result[key] for result in results])) for key in keys}


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
