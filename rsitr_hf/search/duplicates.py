"""Near-duplicate images by their CLIP embeddings: the embedding method of ``rsitr-audit --model``.

Each image is embedded (a :class:`~rsitr_hf.evaluation.inference.RetrievalModel`: a base with an optional
adapter), its ``neighbours`` nearest images are found through the search index's backend (FAISS above
:class:`~rsitr_hf.search.ann.ANNConfig`'s ``flat_below`` vectors when installed, exact search below), and a
pair is flagged when its cosine is at least ``min_cosine``. Embeddings see through crops, shifts and
photometric edits that the perceptual hash misses; how high the cosine of true duplicates is, and of
distinct look-alike scenes, depends on the model, so the threshold is the user's to check on the grid.
"""

from __future__ import annotations

import torch

from ..data.duplicates import AuditImage, ExtraMethod
from ..evaluation.inference import RetrievalModel
from .ann import ANNConfig, ANNIndex
from .index import read_image

MIN_COSINE = 0.95
NEIGHBOURS = 10


def embed_images(model: RetrievalModel, images: list[AuditImage], batch_size: int = 64) -> torch.Tensor:
    """``(N, D)`` unit embeddings of ``images`` (in their order)."""
    rows = []
    for start in range(0, len(images), batch_size):
        batch = [read_image(image.path) for image in images[start : start + batch_size]]
        rows.append(model.embed_images(batch))
    return torch.cat(rows) if rows else torch.zeros(0, 1)


def close_pairs(
    embeddings: torch.Tensor,
    min_cosine: float = MIN_COSINE,
    neighbours: int = NEIGHBOURS,
    config: ANNConfig | None = None,
    chunk: int = 1024,
) -> list[tuple[int, int, float]]:
    """``(i, j, cosine)``, ``i < j``, for each image's ``neighbours`` nearest others whose cosine is at least
    ``min_cosine``: through FAISS where ``config`` builds an index for this many vectors, else exactly."""
    config = config or ANNConfig()
    count = len(embeddings)
    k = min(neighbours + 1, count)  # each image finds itself first
    if k < 2:
        return []
    if config.uses_faiss(count):
        scores, rows = ANNIndex.build(embeddings.numpy(), config).search(embeddings.numpy(), k)
        scores, rows = torch.from_numpy(scores), torch.from_numpy(rows)
    else:
        parts = [
            (embeddings[start : start + chunk] @ embeddings.T).topk(k, dim=1)
            for start in range(0, count, chunk)
        ]
        scores, rows = torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])
    found = {}
    for i, (row_scores, row_ids) in enumerate(zip(scores.tolist(), rows.tolist(), strict=True)):
        for score, j in zip(row_scores, row_ids, strict=True):
            if j >= 0 and j != i and score >= min_cosine:
                found[min(i, j), max(i, j)] = score
    return [(i, j, score) for (i, j), score in sorted(found.items())]


def embedding_method(
    model: RetrievalModel,
    min_cosine: float = MIN_COSINE,
    neighbours: int = NEIGHBOURS,
    batch_size: int = 64,
) -> ExtraMethod:
    """The audit's ``embedding`` method with ``model``."""

    def find(images: list[AuditImage]) -> list[tuple[int, int, float]]:
        return close_pairs(embed_images(model, images, batch_size), min_cosine, neighbours)

    settings = {
        "evidence": "cosine of the images' CLIP embeddings",
        "model": model.identity.describe(),
        "min_cosine": min_cosine,
        "neighbours": neighbours,
    }
    return ExtraMethod("embedding", settings, find)
