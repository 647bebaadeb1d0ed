"""Searching an image index: text -> images, image -> images, and image -> captions of a caption file."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..data.images import to_rgb
from ..evaluation.inference import RetrievalModel
from .errors import SearchError
from .index import ImageIndex, read_image
from .scenes import Window, read_tiles, window_iou
from .spatial import Area, rows_in

logger = logging.getLogger(__name__)

SEARCH_GROWTH = 4  # a scene index fetches this many times more candidates while overlaps leave too few


@dataclass
class Hit:
    """One result: ``rank`` (1 = best), cosine ``score``, and the image path or caption found; from a scene
    index, the scene and the ``window`` (column, row, width, height in pixels) and, for a georeferenced
    scene, its ``footprint`` (a closed ring of WGS84 ``[longitude, latitude]``)."""

    rank: int
    score: float
    item: str
    window: Window | None = None
    footprint: list[list[float]] | None = None

    def describe(self) -> str:
        """The item, with the window and the footprint's centre for a tile."""
        if self.window is None:
            return self.item
        column, row, width, height = self.window
        text = f"{self.item} [x {column}, y {row}, {width}x{height}]"
        if self.footprint is not None:
            longitude, latitude = (sum(values[:-1]) / 4 for values in zip(*self.footprint, strict=True))
            text += f" at {latitude:.6f}, {longitude:.6f}"
        return text


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
    index: ImageIndex,
    model: RetrievalModel,
    queries: list[str],
    k: int = 5,
    max_overlap: float = 0.0,
    area: Area | None = None,
) -> list[list[Hit]]:
    """Text -> image: the ``k`` best indexed images (paths under ``index.root``), or scene windows, for each
    query (``max_overlap``, ``area``: see :func:`nearest_images`)."""
    if not queries or any(not query.strip() for query in queries):
        raise SearchError("text queries must be non-empty")
    return nearest_images(index, model.embed_texts(queries), k, max_overlap, area)


def similar_images(
    index: ImageIndex,
    model: RetrievalModel,
    image: PIL.Image.Image,
    k: int = 5,
    max_overlap: float = 0.0,
    area: Area | None = None,
) -> list[Hit]:
    """Image -> image: the ``k`` indexed images (or scene windows) nearest to ``image`` (itself first when it
    is indexed)."""
    return nearest_images(index, model.embed_images([to_rgb(image)]), k, max_overlap, area)[0]


def nearest_images(
    index: ImageIndex,
    query_embeds: torch.Tensor,
    k: int,
    max_overlap: float = 0.0,
    area: Area | None = None,
) -> list[list[Hit]]:
    """For each of ``(Q, D)`` unit ``query_embeds``: the ``k`` indexed images of highest cosine
    (:meth:`ImageIndex.search`: through the FAISS index when there is one, else exactly). From a scene index,
    the ``k`` best windows of which no two of one scene overlap by more than ``max_overlap`` (intersection
    over union; 0: not at all): a window overlapping a better one is dropped (non-maximum suppression), so
    that the hits are ``k`` places; given an ``area``, only windows whose footprint intersects it
    (:mod:`rsitr_hf.search.spatial`). The windows of a scene whose file changed since it was tiled are left
    out (its old embeddings no longer show it): the scene is named in ``index.stale`` and in a warning."""
    allowed, checked = None, set()
    index.stale = {}
    if area is not None:
        if index.tiling is None:
            raise SearchError(
                f"{area.description}: {index.folder} is not a scene index (it has no footprints)"
            )
        allowed = rows_in(index.shards, area)
    queries, total = query_embeds.float().numpy(), len(index) if allowed is None else len(allowed)
    fetch = k if index.tiling is None else k * SEARCH_GROWTH
    while True:
        if total:
            scores, ids = index.search(queries, min(fetch, total), allowed)
        else:
            scores, ids = (np.zeros((len(queries), 0)),) * 2
        found = [
            [(score, row) for score, row in zip(query_scores, query_ids, strict=True) if row >= 0]
            for query_scores, query_ids in zip(scores.tolist(), ids.tolist(), strict=True)
        ]  # IVF: fewer than asked when the probed lists hold fewer
        wanted = sorted({row for candidates in found for _, row in candidates})
        items = dict(zip(wanted, index.items(np.array(wanted, dtype=np.int64)), strict=True))
        if index.tiling is not None:
            scenes = {scene for scene, _, _ in items.values()} - checked
            index.stale |= index.scene_changes(scenes)
            checked |= scenes
            fresh = [
                [(score, row) for score, row in hits if items[row][0] not in index.stale] for hits in found
            ]
            found = [suppress_overlaps(candidates, items, max_overlap)[:k] for candidates in fresh]
        if index.tiling is None or fetch >= total or all(len(hits) == k for hits in found):
            if index.stale:
                logger.warning("warning: %s", index.stale_note())
            return [
                [Hit(rank + 1, score, *items[row]) for rank, (score, row) in enumerate(hits)]
                for hits in found
            ]
        fetch *= SEARCH_GROWTH


def suppress_overlaps(
    candidates: list[tuple[float, int]], items: dict[int, tuple], max_overlap: float
) -> list[tuple[float, int]]:
    """``candidates`` (score, row id), best first, without those overlapping a better kept one of their
    scene (``items``: the scene, window and footprint of each row) by more than ``max_overlap``."""
    kept: list[tuple[float, int]] = []
    for score, row in candidates:
        scene, window, _ = items[row]
        if all(
            items[other][0] != scene or window_iou(window, items[other][1]) <= max_overlap
            for _, other in kept
        ):
            kept.append((score, row))
    return kept


def hit_image(index: ImageIndex, hit: Hit) -> PIL.Image.Image:
    """The image found, or the window found (read from its scene, never the whole scene), as RGB."""
    if hit.window is None:
        return read_image(Path(index.root) / hit.item)
    return read_tiles(index.root, [(hit.item, hit.window)], index.scenes)[0]


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
    lines = [f"query: {query}", "  rank  score   item"]
    lines += [f"  {hit.rank:>4}  {hit.score:.4f}  {hit.describe()}" for hit in hits]
    return "\n".join(lines)


def hits_geojson(results: list[tuple[str, list[Hit]]]) -> dict:
    """The hits of each ``(query, hits)`` as a GeoJSON FeatureCollection (RFC 7946: WGS84 longitude,
    latitude): one Polygon feature per hit, its footprint (``null`` geometry for a scene without
    georeference), with the query, rank, score, scene and pixel window as flat properties (a GIS's
    attribute table)."""
    features = []
    for query, hits in results:
        for hit in hits:
            column, row, width, height = hit.window or (None,) * 4
            polygon = None if hit.footprint is None else {"type": "Polygon", "coordinates": [hit.footprint]}
            features.append(
                {
                    "type": "Feature",
                    "geometry": polygon,
                    "properties": {
                        "query": query, "rank": hit.rank, "score": round(hit.score, 6), "scene": hit.item,
                        "col_off": column, "row_off": row, "width": width, "height": height,
                    },
                }
            )  # fmt: skip
    return {"type": "FeatureCollection", "features": features}
