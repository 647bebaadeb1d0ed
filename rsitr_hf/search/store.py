"""The append-only store of an index: immutable shards and the manifest that lists them.

    INDEX_DIR/manifest.json                    what the index is (replaced atomically: the one commit)
    INDEX_DIR/shard-<id>/embeddings.npy        (rows, D) unit vectors, float32 or float16, memory-mapped
    INDEX_DIR/shard-<id>/rows.parquet          a row per embedding (GeoParquet for a scene index)
    INDEX_DIR/shard-<id>/scenes.parquet        scene index: how each scene tiled in this shard is read
    INDEX_DIR/shard-<id>/deleted-<id>.parquet  names (files or scenes) of this shard deleted since
    INDEX_DIR/ann-<id>[-<part>].faiss          the FAISS index, when there is one (IVF: lists in parts)

Each row has a ``row_id``, given once (``next_id`` counts on) and never reused: a shard holds the ids
``[first_id, end_id)``, all of them as written, a sorted subset after ``compact``. Adding writes new shards
only; deleting a file writes a new deletion file for the shards that hold it; both become the index when
the manifest naming them replaces the previous one. Anything under the folder the manifest does not name
is a leftover of an interrupted run, removed by :func:`sweep`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..evaluation.inference import ModelIdentity
from .ann import EXACT_BLOCK
from .geoparquet import file_bbox
from .scenes import SceneInfo, Tiling

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 4  # 4: scenes record their files' fingerprints
EMBEDDINGS_FILE, ROWS_FILE, SCENES_FILE = "embeddings.npy", "rows.parquet", "scenes.parquet"
STORED_DTYPES = ("float32", "float16")
SHARD_NAME = re.compile(r"shard-[0-9a-f]{12}")
DELETIONS_NAME = re.compile(r"deleted-[0-9a-f]{12}\.parquet")
ANN_NAME = re.compile(r"ann-[0-9a-f]{12}(-[0-9a-f]{8})?\.faiss")
SCENE_SCHEMA = pa.schema(
    [
        ("scene", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
        ("bands", pa.list_(pa.int32())), ("scale", pa.list_(pa.float64())), ("crs", pa.string()),
        ("transform", pa.list_(pa.float64())),
        ("tile", pa.list_(pa.int32())), ("stride", pa.list_(pa.int32())),
        ("fingerprint", pa.struct([("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string())])),
    ]
)  # fmt: skip


def new_name(prefix: str, suffix: str = "") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}{suffix}"


@dataclass
class ShardEntry:
    """A shard as the manifest lists it: its folder ``name``, its id range ``[first_id, end_id)``, the
    ``rows`` it holds, the SHA-256 of each of its files as written, and its deletion file (``deletions``)
    with the number of its rows that file deletes (``deleted``)."""

    name: str
    first_id: int
    end_id: int
    rows: int
    checksums: dict[str, str]
    deletions: str | None = None
    deleted: int = 0

    @property
    def live(self) -> int:
        return self.rows - self.deleted


@dataclass
class Manifest:
    """What an index is: the folder it indexes (``root``), the model that embedded it, the embeddings'
    ``dim`` and stored ``dtype``, the ``tiling`` of a scene index, its shards, the next row id, the scenes
    an interruption cut short (``pending``: tiled again by the next run), its FAISS index (``ann``: its
    settings, whose ``files`` are its files, and its size; ``None`` for exact search), the row id up to
    which the search backend was chosen (``ann_through``: the FAISS index holds every row below it, later
    rows are searched exactly) with the settings it was chosen by (``ann_config``), and, when ``auto`` chose
    exact search, why
    (``exact_because``)."""

    root: str
    model: ModelIdentity
    dim: int
    dtype: str = "float32"
    tiling: Tiling | None = None
    shards: list[ShardEntry] = field(default_factory=list)
    next_id: int = 0
    pending: list[str] = field(default_factory=list)
    ann: dict | None = None
    ann_through: int = 0
    ann_config: dict | None = None
    exact_because: str | None = None

    @property
    def item_column(self) -> str:
        """The rows' column naming what each row is of: ``file`` (an image) or ``scene``."""
        return "file" if self.tiling is None else "scene"

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            **{key: value for key, value in asdict(self).items() if key not in ("model", "tiling", "shards")},
            "model": asdict(self.model),
            "tiling": None if self.tiling is None else self.tiling.to_dict(),
            "shards": [asdict(entry) for entry in self.shards],
        }

    @classmethod
    def from_dict(cls, values: dict) -> Manifest:
        """The manifest ``values`` describe; ``KeyError``/``TypeError``/``ValueError`` when it is damaged."""
        if values.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format {values.get('format_version')}, not {FORMAT_VERSION}")
        tiling = values["tiling"]
        manifest = cls(
            root=str(values["root"]),
            model=ModelIdentity(**values["model"]),
            dim=int(values["dim"]),
            dtype=values["dtype"],
            tiling=None if tiling is None else Tiling.from_dict(tiling),
            shards=[ShardEntry(**entry) for entry in values["shards"]],
            next_id=int(values["next_id"]),
            pending=[str(name) for name in values["pending"]],
            ann=values["ann"],
            ann_through=int(values["ann_through"]),
            ann_config=values["ann_config"],
            exact_because=values["exact_because"],
        )
        if manifest.dtype not in STORED_DTYPES:
            raise ValueError(f"dtype {manifest.dtype!r}, not one of {STORED_DTYPES}")
        for entry in manifest.shards:
            if not SHARD_NAME.fullmatch(entry.name) or (
                entry.deletions is not None and not DELETIONS_NAME.fullmatch(entry.deletions)
            ):
                raise ValueError(
                    f"shard {entry.name!r} (deletions {entry.deletions!r}) is not a name it writes"
                )
        for ann_file in manifest.ann_files():
            if not isinstance(ann_file, str) or not ANN_NAME.fullmatch(ann_file):
                raise ValueError(f"ANN file {ann_file!r} is not a name it writes")
        return manifest

    def ann_files(self) -> list[str]:
        """The files of the FAISS index (none for exact search)."""
        return [] if self.ann is None else list(self.ann["settings"]["files"])


def file_sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


class Shard:
    """A shard opened for reading: its embeddings memory-mapped, its rows read when first needed."""

    def __init__(self, folder: Path, entry: ShardEntry, manifest: Manifest):
        self.path, self.entry, self.item_column = folder / entry.name, entry, manifest.item_column
        self.embeddings = np.load(self.path / EMBEDDINGS_FILE, mmap_mode="r", allow_pickle=False)
        if self.embeddings.shape != (entry.rows, manifest.dim) or self.embeddings.dtype != manifest.dtype:
            raise ValueError(
                f"{self.path / EMBEDDINGS_FILE} holds {self.embeddings.dtype} {self.embeddings.shape}, the "
                f"manifest says {manifest.dtype} ({entry.rows}, {manifest.dim})"
            )
        if not (self.path / ROWS_FILE).is_file():
            raise ValueError(f"{self.path / ROWS_FILE} is missing")
        self._rows: pa.Table | None = None
        self._ids: np.ndarray | None = None
        self._bbox: list[float] | None | bool = False  # not read yet
        self._dead: np.ndarray | None = None
        self.deleted_names: set[str] = set()
        if entry.deletions is not None:
            names = pq.read_table(self.path / entry.deletions, columns=["name"])["name"]
            self.deleted_names = set(names.to_pylist())

    @property
    def dense(self) -> bool:
        return self.entry.rows == self.entry.end_id - self.entry.first_id

    def rows(self) -> pa.Table:
        if self._rows is None:
            table = pq.read_table(self.path / ROWS_FILE)
            if len(table) != self.entry.rows:
                raise ValueError(
                    f"{self.path / ROWS_FILE} has {len(table)} rows, the manifest {self.entry.rows}"
                )
            self._rows = table
        return self._rows

    def live_rows(self) -> pa.Table:
        """Its rows, the deleted ones left out."""
        dead = self.dead()
        return self.rows() if dead is None else self.rows().filter(pa.array(~dead))

    def bbox(self) -> list[float] | None:
        """The bbox its rows table's GeoParquet metadata gives (read once; ``None``: no footprint)."""
        if self._bbox is False:
            self._bbox = file_bbox(pq.read_schema(self.path / ROWS_FILE))
        return self._bbox

    def ids(self) -> np.ndarray:
        """The row ids this shard holds, increasing."""
        if self.dense:
            return np.arange(self.entry.first_id, self.entry.end_id, dtype=np.int64)
        if self._ids is None:  # the one column, not the whole table
            self._ids = pq.read_table(self.path / ROWS_FILE, columns=["row_id"])["row_id"].to_numpy()
        return self._ids

    def dead(self) -> np.ndarray | None:
        """``(rows,)``: which rows are deleted (``None``: none is)."""
        if not self.deleted_names:
            return None
        if self._dead is None:
            names = pa.array(sorted(self.deleted_names), pa.string())
            self._dead = pc.is_in(self.rows()[self.item_column], value_set=names).to_numpy(
                zero_copy_only=False
            )
        return self._dead

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """The positions in this shard of ``ids`` (which it holds)."""
        if self.dense:
            return ids - self.entry.first_id
        return np.searchsorted(self.ids(), ids)

    def names(self) -> set[str]:
        """The files or scenes this shard holds, deleted ones left out (a scene index: every scene tiled in
        this shard, those without valid windows included)."""
        if self.item_column == "scene":
            column = pq.read_table(self.path / SCENES_FILE, columns=["scene"])["scene"]
        else:
            column = self.rows()["file"]
        return set(pc.unique(column).to_pylist()) - self.deleted_names

    def scenes(self) -> dict[str, SceneInfo]:
        rows = pq.read_table(self.path / SCENES_FILE).to_pylist()
        return {
            row.pop("scene"): SceneInfo.from_dict(row)
            for row in rows
            if row["scene"] not in self.deleted_names
        }

    def with_deleted(self, folder: Path, names: set[str]) -> ShardEntry | None:
        """A new deletion file deleting ``names`` too, and the entry naming it (``None``: holds none)."""
        wanted = (names & self.names()) - self.deleted_names
        if not wanted:
            return None
        deleted = sorted(self.deleted_names | wanted)
        file_name = new_name("deleted", ".parquet")
        pq.write_table(pa.table({"name": pa.array(deleted, pa.string())}), self.path / file_name)
        self.deleted_names = set(deleted)
        self._dead = None
        dead = self.dead()
        return replace(self.entry, deletions=file_name, deleted=int(dead.sum()) if dead is not None else 0)


def write_shard(
    folder: Path,
    embeddings: np.ndarray,
    rows: pa.Table,
    dtype: str,
    scenes: dict[str, SceneInfo] | None,
    first_id: int,
    end_id: int | None = None,
) -> ShardEntry:
    """Write a shard of ``embeddings`` (row ``i`` is ``rows[i]``) holding ids ``[first_id, end_id)`` (default:
    one a row) and, for a scene index, the ``scenes`` tiled in it; not part of the index until a manifest
    names it."""
    name = new_name("shard")
    path = folder / name
    path.mkdir(parents=True)
    np.save(path / EMBEDDINGS_FILE, np.ascontiguousarray(embeddings, dtype=dtype), allow_pickle=False)
    pq.write_table(rows, path / ROWS_FILE)
    if scenes is not None:
        records = [{"scene": scene, **asdict(info)} for scene, info in scenes.items()]
        pq.write_table(pa.Table.from_pylist(records, SCENE_SCHEMA), path / SCENES_FILE)
    checksums = {file.name: file_sha256(file) for file in sorted(path.iterdir())}
    end_id = first_id + len(rows) if end_id is None else end_id
    return ShardEntry(name, first_id, end_id, len(rows), checksums)


def sweep(folder: Path, manifest: Manifest | None) -> None:
    """Remove what ``manifest`` does not name: shards, deletion files and FAISS files of interrupted
    runs, and half-written temporary files (``None``: no index yet, so every such file goes)."""
    shards = {} if manifest is None else {entry.name: entry for entry in manifest.shards}
    ann_files = set() if manifest is None else set(manifest.ann_files())
    for child in folder.iterdir():
        if SHARD_NAME.fullmatch(child.name) and child.is_dir():
            if child.name not in shards:
                shutil.rmtree(child)
                continue
            for leftover in child.glob("deleted-*.parquet"):
                if leftover.name != shards[child.name].deletions:
                    leftover.unlink()
        elif (ANN_NAME.fullmatch(child.name) and child.name not in ann_files) or (
            child.name.startswith(".") and child.name.endswith(".tmp")
        ):
            child.unlink()


class StoreVectors:
    """The live rows of a set of shards as vectors by row id (what :mod:`rsitr_hf.search.ann` reads)."""

    def __init__(self, shards: list[Shard], dim: int):
        self.shards, self.dim = shards, dim
        self.starts = np.array([shard.entry.first_id for shard in shards], dtype=np.int64)

    def __len__(self) -> int:
        return sum(shard.entry.live for shard in self.shards)

    def ids(self) -> np.ndarray:
        """The live row ids, increasing."""
        pieces = [
            shard.ids() if shard.dead() is None else shard.ids()[~shard.dead()] for shard in self.shards
        ]
        return np.concatenate(pieces) if pieces else np.empty(0, np.int64)

    def dead_ids(self) -> np.ndarray:
        pieces = [shard.ids()[shard.dead()] for shard in self.shards if shard.dead() is not None]
        return np.concatenate(pieces) if pieces else np.empty(0, np.int64)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids), D)`` float32: the rows ``ids`` (live ones, in any order), each shard read in order."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        owner = np.searchsorted(self.starts, ids, side="right") - 1
        for number in np.unique(owner):
            chosen = np.flatnonzero(owner == number)
            shard = self.shards[number]
            positions = shard.positions(ids[chosen])
            order = np.argsort(positions, kind="stable")
            out[chosen[order]] = shard.embeddings[positions[order]]
        return out

    def blocks(self, size: int = EXACT_BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, (n, D) float32)`` of the live rows, shard by shard, ``size`` rows read at a time."""
        for shard in self.shards:
            ids, dead = shard.ids(), shard.dead()
            for start in range(0, shard.entry.rows, size):
                block = np.asarray(shard.embeddings[start : start + size], dtype=np.float32)
                block_ids = ids[start : start + size]
                if dead is not None:
                    keep = ~dead[start : start + size]
                    block, block_ids = block[keep], block_ids[keep]
                if len(block_ids):
                    yield block_ids, block

    def blocks_of(self, ids: np.ndarray, size: int = EXACT_BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, (n, D) float32)`` of the rows ``ids`` (live, increasing), ``size`` at a time."""
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            yield chunk, self.take(chunk)

    def since(self, first_id: int) -> StoreVectors:
        """The shards whose ids start at ``first_id`` or later (those added since)."""
        return StoreVectors([shard for shard in self.shards if shard.entry.first_id >= first_id], self.dim)
