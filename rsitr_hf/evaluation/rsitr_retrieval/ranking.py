"""The ranking of image-text retrieval (numpy only): the ranks of the correct items, under each way of
counting exact ties, and the recalls. This is the one implementation: the ``evaluate`` module beside it and
``rsitr_hf.evaluation.retrieval_metrics`` both call it."""

import numpy as np

RECALL_KS = (1, 5, 10)
TIE_PROTOCOLS = ("pessimistic", "optimistic", "reference")


def retrieval_ranks(
    similarity, caption_image_ids, image_ids, ties: str = "pessimistic"
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the correct item per image query and per caption query, ties counted by ``ties``.

    ``similarity`` is ``(num_images, num_captions)`` in any float dtype (kept: comparisons are exact in it,
    and the order numpy gives tied scores in ``reference`` depends on it), ``caption_image_ids`` the image id
    of each column, ``image_ids`` the id of each row. Returns ``(i2t_ranks, t2i_ranks)``: an image's rank is
    that of its best-ranked own caption, a caption's that of its own image, each counting the items of other
    images scoring at least as high (``pessimistic``), strictly higher (``optimistic``), or placed before it
    by the field's sort (``reference``). ``rsitr_hf.evaluation.retrieval_ranks`` calls this function.
    """
    if ties not in TIE_PROTOCOLS:
        raise ValueError(f"ties must be one of {list(TIE_PROTOCOLS)}, got {ties!r}")
    scores = np.asarray(similarity)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
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


def recall_metrics(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 of both directions and their mean ``mR``, in percent, from 0-based ranks."""
    metrics = {}
    for direction, ranks in (("i2t", np.asarray(i2t_ranks)), ("t2i", np.asarray(t2i_ranks))):
        for k in RECALL_KS:
            metrics[f"{direction}_r{k}"] = 100.0 * float((ranks < k).mean())
    metrics["mR"] = sum(metrics.values()) / len(metrics)
    return metrics
