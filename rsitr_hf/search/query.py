"""Searching an image index: text -> images, image -> images, and image -> captions of a caption file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch

from ..data.images import to_rgb
from .index import ImageIndex, read_image
from .model import RetrievalModel, SearchError


@dataclass
class Hit:
    """One result: ``rank`` (1 = best), cosine ``score``, and the image path or caption found."""

    rank: int
    score: float
    item: str


def top_k(similarity: torch.Tensor, items: list[str], k: int) -> list[list[Hit]]:
    """For each row of ``(Q, N)`` ``similarity``: the ``k`` best of ``items``, best first."""
    scores, indices = similarity.topk(min(k, similarity.shape[1]), dim=1)
    return [
        [
            Hit(rank + 1, score, items[index])
            for rank, (score, index) in enumerate(zip(row_s, row_i, strict=True))
        ]
        for row_s, row_i in zip(scores.tolist(), indices.tolist(), strict=True)
    ]


def search_images(
    index: ImageIndex, model: RetrievalModel, queries: list[str], k: int = 5
) -> list[list[Hit]]:
    """Text -> image: the ``k`` best indexed images (paths under ``index.root``) for each query."""
    if not queries or any(not query.strip() for query in queries):
        raise SearchError("text queries must be non-empty")
    return nearest_images(index, model.embed_texts(queries), k)


def similar_images(index: ImageIndex, model: RetrievalModel, image: PIL.Image.Image, k: int = 5) -> list[Hit]:
    """Image -> image: the ``k`` indexed images nearest to ``image`` (itself first when it is indexed)."""
    return nearest_images(index, model.embed_images([to_rgb(image)]), k)[0]


def nearest_images(index: ImageIndex, query_embeds: torch.Tensor, k: int) -> list[list[Hit]]:
    """For each of ``(Q, D)`` unit ``query_embeds``: the ``k`` indexed images of highest cosine, through the
    FAISS index when there is one, else exactly."""
    if index.ann is None:
        return top_k(query_embeds @ index.embeddings.T, index.files, k)
    scores, rows = index.ann.search(query_embeds.numpy(), k)
    hits = []
    for query_scores, query_rows in zip(scores, rows, strict=True):
        found = [
            (float(score), index.files[row])
            for score, row in zip(query_scores, query_rows, strict=True)
            if row >= 0  # IVF: fewer than k in the probed lists
        ]
        hits.append([Hit(rank + 1, score, item) for rank, (score, item) in enumerate(found)])
    return hits


def read_captions(path: str | os.PathLike) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    captions = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not captions:
        raise SearchError(f"{path}: no captions (expected one caption per line)")
    return captions


def search_captions(
    model: RetrievalModel, image: str | os.PathLike, captions: list[str], k: int = 5, batch_size: int = 256
) -> list[Hit]:
    """Image -> text: the ``k`` best of ``captions`` for the image at ``image``."""
    image_embeds = model.embed_images([read_image(Path(image))])
    text_embeds = torch.cat(
        [model.embed_texts(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)]
    )
    return top_k(image_embeds @ text_embeds.T, captions, k)[0]


def format_table(query: str, hits: list[Hit]) -> str:
    width = max([len(hit.item) for hit in hits] + [4])
    lines = [f"query: {query}", f"  rank  score   {'item'.ljust(width)}"]
    lines += [f"  {hit.rank:>4}  {hit.score:.4f}  {hit.item}" for hit in hits]
    return "\n".join(lines)
