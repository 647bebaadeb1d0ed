"""``evaluate`` metric module: image-text retrieval recall (R@1/5/10 both ways and mR).

Self-contained (numpy only), so ``evaluate.load`` works on this folder, or on a Hub copy of it, without
``rsitr_hf`` installed; ``rsitr_hf.evaluation.load_retrieval_metric()`` loads it offline. The ranking is
the one of ``rsitr_hf.evaluation.retrieval_metrics`` (a test keeps the two equal). Add one row of the
similarity matrix per image::

    metric.add_batch(predictions=similarity_rows, references=image_ids)
    metric.compute(caption_image_ids=caption_image_ids)

``predictions`` are rows of the ``(num_images, num_captions)`` similarity matrix (kept in float64, so
near-equal scores do not become ties), ``references`` the image id of each row, and
``caption_image_ids`` the image id of each column. ``compute(..., ties=...)`` chooses how exact ties with
the correct item count: ``pessimistic`` (default: against the query), ``optimistic`` (for it) or
``reference`` (the field's released code: ``numpy.argsort(scores)[::-1]`` per query; the rows are float64
here, so for the papers' float32 matrices use ``rsitr_hf.evaluation.retrieval_metrics``).
"""

import datasets
import evaluate
import numpy as np

RECALL_KS = (1, 5, 10)
TIE_PROTOCOLS = ("pessimistic", "optimistic", "reference")

_DESCRIPTION = __doc__
_CITATION = """\
@article{yuan2023parameter,
  title={Parameter-Efficient Transfer Learning for Remote Sensing Image-Text Retrieval},
  author={Yuan and Zhan and Xiong},
  journal={IEEE Transactions on Geoscience and Remote Sensing},
  year={2023},
  note={arXiv:2308.12509}
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: one row of similarities per image (list of floats, one per caption).
    references: the image id of each row.
    caption_image_ids: the image id of each caption (column), passed to compute().
    ties: "pessimistic" (default), "optimistic" or "reference", passed to compute().
Returns:
    i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, mR: recalls in percent. An item of another image
    scoring exactly as high as the correct one counts as ranked above it.
Examples:
    >>> metric = evaluate.load("rsitr_retrieval")
    >>> scores = [[0.9, 0.1], [0.2, 0.8]]
    >>> result = metric.compute(predictions=scores, references=[0, 1], caption_image_ids=[0, 1])
    >>> result["mR"], result["i2t_r1"]
    (100.0, 100.0)
"""


def retrieval_ranks(
    similarity, caption_image_ids, image_ids, ties: str = "pessimistic"
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the correct item per image query and per caption query, ties counted by ``ties``."""
    if ties not in TIE_PROTOCOLS:
        raise ValueError(f"ties must be one of {list(TIE_PROTOCOLS)}, got {ties!r}")
    scores = np.asarray(similarity, dtype=np.float64)
    caption_ids = np.asarray(caption_image_ids, dtype=np.int64)
    row_ids = np.asarray(image_ids, dtype=np.int64)
    num_images, num_captions = scores.shape
    if caption_ids.shape != (num_captions,) or row_ids.shape != (num_images,):
        raise ValueError(
            f"similarity is {scores.shape} but got {caption_ids.shape} caption ids and {row_ids.shape} image "
            f"ids; expected ({num_captions},) and ({num_images},)"
        )
    if len(np.unique(row_ids)) != num_images:
        raise ValueError("image_ids must be unique")
    own = caption_ids[None, :] == row_ids[:, None]
    unmatched = np.flatnonzero(~own.any(axis=0))
    if len(unmatched):
        raise ValueError(
            f"{len(unmatched)} caption(s) belong to no image row, e.g. caption {unmatched[0]} with image id "
            f"{caption_ids[unmatched[0]]}"
        )
    captionless = np.flatnonzero(~own.any(axis=1))
    if len(captionless):
        raise ValueError(f"image id {row_ids[captionless[0]]} has no caption in the matrix")
    if ties == "reference":
        return reference_ranks(scores, own)
    at_least = np.greater_equal if ties == "pessimistic" else np.greater
    best_own = np.where(own, scores, -np.inf).max(axis=1)
    i2t_ranks = (at_least(scores, best_own[:, None]) & ~own).sum(axis=1)
    own_score = scores[own.argmax(axis=0), np.arange(num_captions)]
    t2i_ranks = (at_least(scores, own_score[None, :]) & ~own).sum(axis=0)
    return i2t_ranks, t2i_ranks


def reference_ranks(scores: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The field's procedure: items ordered by ``np.argsort(scores)[::-1]`` per image row and per caption
    column; an image's rank is the best position of its captions, a caption's the position of its image."""
    num_images, num_captions = scores.shape
    i2t = np.empty(num_images, dtype=np.int64)
    for row in range(num_images):
        position = np.empty(num_captions, dtype=np.int64)
        position[np.argsort(scores[row])[::-1]] = np.arange(num_captions)
        i2t[row] = position[own[row]].min()
    own_row = own.argmax(axis=0)
    t2i = np.array(
        [
            np.flatnonzero(np.argsort(scores.T[column])[::-1] == own_row[column])[0]
            for column in range(num_captions)
        ],
        dtype=np.int64,
    )
    return i2t, t2i


class RsitrRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2308.12509"],
        )

    def _compute(self, predictions, references, caption_image_ids=None, ties="pessimistic"):
        if caption_image_ids is None:
            raise ValueError("pass caption_image_ids= (the image id of each similarity column) to compute()")
        i2t_ranks, t2i_ranks = retrieval_ranks(predictions, caption_image_ids, references, ties)
        metrics = {}
        for direction, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
            for k in RECALL_KS:
                metrics[f"{direction}_r{k}"] = 100.0 * float((ranks < k).mean())
        metrics["mR"] = sum(metrics.values()) / len(metrics)
        return metrics
