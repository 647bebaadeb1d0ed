"""An image index opened for searching: the embeddings of the images of a folder (or of the windows of its
scenes) in an append-only store of shards (:mod:`rsitr_hf.search.store`), optionally with a FAISS index
over them, and only ever used with the model that built it. ``rsitr-search index``
(:mod:`rsitr_hf.search.update`) builds and updates one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa

from ..data.images import IMAGE_SUFFIXES, UnreadableImageError, read_rgb
from ..evaluation.inference import RetrievalModel
from ..utils.errors import InputError, first_line
from .ann import ANNIndex, exact_top_k
from .errors import SearchError
from .geoparquet import WINDOW_COLUMNS, wkb_polygon_ring
from .scenes import SceneInfo, Window
from .store import FORMAT_VERSION, MANIFEST_FILE, Manifest, Shard, StoreVectors

FORMAT_2_FILE = "index.json"  # rsitr_hf 0.2's index, converted by its next update
EARLIER_FORMATS = (3,)  # manifests of earlier versions, rebuilt (format 2 has no manifest: converted)
FILTER_EXACT_ROWS = 1_000_000  # a spatial filter's rows are scored exactly up to this many


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursive), as sorted POSIX paths relative to it; links that lead
    outside ``folder`` are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such image folder")
    root = folder.resolve()
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and path.resolve().is_relative_to(root)
    )


def confined(name: str) -> bool:
    """True when ``name`` is a relative POSIX path that stays inside its folder (no ``..``, not absolute)."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and "\\" not in name


def read_image(path: Path) -> PIL.Image.Image:
    """:func:`~rsitr_hf.data.images.read_rgb`, failing with a :class:`SearchError`."""
    try:
        return read_rgb(path)
    except UnreadableImageError as error:
        raise SearchError(str(error)) from None


def rebuild_advice(index_dir) -> str:
    return f"delete {index_dir} and build it again with rsitr-search index IMAGE_DIR --index {index_dir}"


class ImageIndex:
    """An index as its manifest describes it: row ids name its rows (images under ``root``, or windows of
    the scenes under it); deleted rows are never returned."""

    def __init__(self, folder: Path, manifest: Manifest, shards: list[Shard], ann: ANNIndex | None = None):
        self.folder, self.manifest, self.shards = Path(folder), manifest, shards
        self.vectors = StoreVectors(shards, manifest.dim)
        self.ann = ann
        self.stale: dict[str, str] = {}  # scenes the latest search found changed (windows left out), and how
        if ann is not None:  # rows deleted since the FAISS index took them in are left out as it searches
            covered = StoreVectors(
                [shard for shard in shards if shard.entry.first_id < self.covers], manifest.dim
            )
            ann.vectors, ann.excluded = self.vectors, covered.dead_ids()

    @property
    def root(self) -> str:
        return self.manifest.root

    @property
    def model(self):
        return self.manifest.model

    @property
    def tiling(self):
        return self.manifest.tiling

    @property
    def covers(self) -> int:
        """The row ids below which the FAISS index holds every row (rows added since are searched exactly)."""
        return self.manifest.ann_through if self.ann is not None else 0

    def __len__(self) -> int:
        return len(self.vectors)

    def describe(self) -> str:
        """``"1,204 images"`` or ``"1,204 tiles of 3 scenes"``."""
        if self.tiling is None:
            return f"{len(self):,} images"
        return f"{len(self):,} tiles of {len(self.scenes):,} scenes"

    def backend(self) -> str:
        """How it is searched, for a header: the FAISS index and its recall, or exact search (and why)."""
        if self.ann is not None:
            return self.ann.summary()
        return "exact search" + (f" ({self.manifest.exact_because})" if self.manifest.exact_because else "")

    @cached_property
    def scenes(self) -> dict[str, SceneInfo]:
        """How each scene of a scene index is read, by name (``{}`` for an image index)."""
        scenes = {}
        if self.tiling is not None:
            for shard in self.shards:
                scenes.update(shard.scenes())
        return scenes

    def scene_changes(self, names: Iterable[str]) -> dict[str, str]:
        """Of the scenes ``names``, those whose file changed since they were tiled, with how in a few words
        (:meth:`~rsitr_hf.utils.files.FileFingerprint.change`: a ``stat`` and at most 128 KiB read each)."""
        changes = {}
        for name in names:
            change = self.scenes[name].fingerprint.change(Path(self.root) / name)
            if change is not None:
                changes[name] = change
        return changes

    def stale_note(self) -> str | None:
        """One line on the scenes the latest search left out because they changed since they were tiled
        (``None``: it left none out)."""
        if not self.stale:
            return None
        changed = "; ".join(f"{name}: {how}" for name, how in self.stale.items())
        return (
            f"{len(self.stale)} scene(s) changed since indexing, their windows left out ({changed}): update "
            f"the index with rsitr-search index --scenes {self.root} --index {self.folder}"
        )

    def names(self) -> set[str]:
        """The files (or scenes) the index holds."""
        return set().union(*(shard.names() for shard in self.shards))

    def search(
        self, queries: np.ndarray, count: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(Q, count)``, best first (ids of -1 past the end): through the FAISS
        index for the rows it covers, exactly for the rows added since, merged. Given ``allowed`` (live
        row ids, increasing: a spatial filter's), only those rows: exactly when they are at most
        ``FILTER_EXACT_ROWS`` (or there is no FAISS index), else through FAISS with an ID selector."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is not None and (self.ann is None or len(allowed) <= FILTER_EXACT_ROWS):
            return exact_top_k(queries, self.vectors.blocks_of(allowed), count)
        found = []
        if self.ann is not None:
            inside = None if allowed is None else allowed[allowed < self.covers]
            found.append(self.ann.search(queries, count, inside))
        tail = self.vectors.since(self.covers)
        if allowed is not None:
            found.append(exact_top_k(queries, self.vectors.blocks_of(allowed[allowed >= self.covers]), count))
        elif len(tail) or not found:
            found.append(exact_top_k(queries, tail.blocks(), count))
        if len(found) == 1:
            return found[0]
        scores = np.concatenate([scores for scores, _ in found], axis=1)
        ids = np.concatenate([ids for _, ids in found], axis=1)
        scores[ids < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :count]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def items(self, ids: np.ndarray) -> list[tuple[str, Window | None, list[list[float]] | None]]:
        """For each row id: the image (or scene) and, in a scene index, the window and the footprint the
        index stored (``None`` without georeference)."""
        ids = np.asarray(ids, dtype=np.int64)
        found: list = [None] * len(ids)
        owner = np.searchsorted(self.vectors.starts, ids, side="right") - 1
        for number in np.unique(owner):
            chosen = np.flatnonzero(owner == number)
            shard = self.shards[number]
            rows = shard.rows().take(pa.array(shard.positions(ids[chosen])))
            names = rows[self.manifest.item_column].to_pylist()
            outside = next((name for name in names if not isinstance(name, str) or not confined(name)), None)
            if outside is not None:
                raise SearchError(
                    f"{shard.path} lists {outside!r}, outside its folder; an index names only files inside "
                    f"the indexed folder ({self.root}): {rebuild_advice(self.folder)}"
                )
            windows, footprints = [None] * len(names), [None] * len(names)
            if self.tiling is not None:
                windows = list(zip(*(rows[column].to_pylist() for column in WINDOW_COLUMNS), strict=True))
                footprints = [
                    None if wkb is None else wkb_polygon_ring(wkb) for wkb in rows["geometry"].to_pylist()
                ]
            for place, name, window, footprint in zip(chosen, names, windows, footprints, strict=True):
                found[place] = (name, window, footprint)
        return found

    def table(self) -> pa.Table:
        """The live rows of every shard, in row-id order (read whole: for export and small indexes)."""
        pieces = [shard.live_rows() for shard in self.shards]
        return pa.concat_tables(pieces) if pieces else pa.table({"row_id": pa.array([], pa.int64())})

    def matrix(self) -> np.ndarray:
        """``(N, D)`` float32: the live embeddings in row-id order (read whole: for small indexes)."""
        blocks = [block for _, block in self.vectors.blocks()]
        return np.concatenate(blocks) if blocks else np.empty((0, self.manifest.dim), np.float32)

    @classmethod
    def load(cls, index_dir: str | os.PathLike) -> ImageIndex:
        """The index in ``index_dir``; a :class:`SearchError` saying how to rebuild it when it is damaged."""
        folder = Path(index_dir)
        if not (folder / MANIFEST_FILE).is_file():
            if (folder / FORMAT_2_FILE).is_file():
                raise SearchError(
                    f"{folder} is an index of rsitr_hf 0.2 (format 2): update it once with rsitr-search "
                    f"index ... --index {folder}, which converts it (its embeddings are kept)"
                )
            raise FileNotFoundError(f"{folder}: no image index here (build one with rsitr-search index)")
        try:
            values = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
            version = values.get("format_version") if isinstance(values, dict) else None
            manifest = None if version in EARLIER_FORMATS else Manifest.from_dict(values)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
            raise SearchError(
                f"{folder / MANIFEST_FILE} is damaged ({first_line(error)}): {rebuild_advice(folder)}"
            ) from None
        if manifest is None:
            raise SearchError(
                f"{folder} is an index of an earlier rsitr_hf (format {version}; this one reads format "
                f"{FORMAT_VERSION}): {rebuild_advice(folder)}"
            )
        shards = []
        for entry in manifest.shards:
            try:
                shards.append(Shard(folder, entry, manifest))
            except (OSError, ValueError, pa.ArrowException) as error:
                raise SearchError(
                    f"{folder / entry.name} is damaged or missing ({first_line(error)}): "
                    + rebuild_advice(folder)
                ) from None
        return cls(folder, manifest, shards, load_ann(folder, manifest))


def load_ann(folder: Path, manifest: Manifest) -> ANNIndex | None:
    """The FAISS index the manifest names (``None`` for exact search), checked against it."""
    if manifest.ann is None:
        return None
    path = folder / manifest.ann_files()[0]
    try:
        ann = ANNIndex.load(folder, manifest.ann["settings"])
    except InputError:
        raise
    except Exception as error:  # FAISS raises RuntimeError for damaged files
        raise SearchError(
            f"{path} is damaged or missing ({first_line(error)}): {rebuild_advice(folder)}"
        ) from None
    if len(ann) != manifest.ann["vectors"]:
        raise SearchError(
            f"{path} holds {len(ann)} vectors, the manifest says {manifest.ann['vectors']}: "
            + rebuild_advice(folder)
        )
    return ann


def model_mismatch(index: ImageIndex, model: RetrievalModel, index_dir) -> str | None:
    """Why ``model`` cannot extend or query ``index`` (another base, adapter or weights), or ``None``."""
    if index.model.matches(model.identity):
        return None
    reason = "" if model.identity.describe() != index.model.describe() else " (same names, other weights)"
    return (
        f"{index_dir} was built with {index.model.describe()}, not with {model.identity.describe()}"
        f"{reason}: query it with the model that built it, or build a new index"
    )


def check_same_model(index: ImageIndex, model: RetrievalModel, index_dir) -> None:
    problem = model_mismatch(index, model, index_dir)
    if problem is not None:
        raise SearchError(problem)


def index_model(
    index: ImageIndex, base_model: str | None = None, adapter: str | None = None
) -> RetrievalModel:
    """The model named (``base_model`` and ``adapter``), or by default the one that built ``index``."""
    named = base_model is not None or adapter is not None
    return RetrievalModel(base_model or index.model.base_model, adapter if named else index.model.adapter)


def open_index(
    index_dir: str | os.PathLike, base_model: str | None = None, adapter: str | None = None
) -> tuple[ImageIndex, RetrievalModel]:
    """An index and the model to query it with: the index's own model, or the one named (which must be
    the same; a ``SearchError`` otherwise)."""
    index = ImageIndex.load(index_dir)
    model = index_model(index, base_model, adapter)
    check_same_model(index, model, index_dir)
    return index, model
