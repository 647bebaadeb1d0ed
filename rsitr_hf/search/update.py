"""Building and updating an index: only new images (or scenes) are embedded, into new shards; gone ones are
recorded as deletions; the FAISS index is extended (or built, or left out when exact search serves better);
``compact`` rewrites the shards that have deletions. ``rsitr-search index`` / ``compact`` call these.

Every change is committed by replacing the manifest (:mod:`rsitr_hf.search.store`): a kill at any point
leaves the previous index, whose answers are unchanged; the next run removes what the kill left. One
indexer at a time (a file lock, ``INDEX_DIR/.lock``). A long run commits a shard of what it has embedded
every ``SAVE_EVERY_SECONDS`` or ``SHARD_ROWS`` rows, so an interruption keeps its work.

Embedding can be spread over the processes of ``accelerate launch``: batches are dealt out in turn by
:func:`rsitr_hf.utils.distributed.embed_batches`, the main process gathers them in order and writes the
shards, equal to a one-process build.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import torch
from filelock import FileLock

from ..evaluation.inference import ModelIdentity, RetrievalModel
from ..utils.distributed import Shards, embed_batches
from ..utils.errors import first_line
from ..utils.files import write_json
from .ann import ANNConfig, ANNIndex, Calibration
from .errors import SearchError
from .geoparquet import image_rows, scene_rows
from .index import FORMAT_2_FILE, ImageIndex, check_same_model, confined, list_images, read_image
from .scenes import SceneInfo, Tiling, Window, describe_scene, read_tiles
from .store import (
    MANIFEST_FILE,
    STORED_DTYPES,
    Manifest,
    Shard,
    new_name,
    sweep,
    write_shard,
)

LOCK_FILE = ".lock"
SAVE_EVERY_SECONDS = 300  # a long run commits what it has embedded (a new shard: nothing is rewritten)
SHARD_ROWS = 1 << 20  # and at least every this many rows (2 GB of 512-dimensional float32)


@dataclass
class IndexUpdate:
    """What :func:`build_index` did: images (or scenes) embedded now, dropped (gone from the folder), the
    total, what became of the FAISS index (``"none"``, ``"built <factory>"``, ``"extended <factory>"``, or
    ``"none (auto: ...)"`` when exact search replaced one below its target) and the recall it measured. For
    scenes also: the windows of the scenes added (``tiles``, in row order), how each added scene is read
    (``scenes``) and the windows without valid pixels (``skipped``: not indexed)."""

    added: list[str]
    removed: list[str]
    total: int
    ann: str = "none"
    calibration: Calibration | None = None
    tiles: list[tuple[str, Window]] | None = None
    scenes: dict[str, SceneInfo] = field(default_factory=dict)
    skipped: int = 0

    def work(self) -> list[tuple[str, Window | None]]:
        """What is embedded, in row order: ``(image, None)`` for each image, else ``(scene, window)``."""
        return self.tiles if self.tiles is not None else [(name, None) for name in self.added]

    def describe(self, index_dir) -> str:
        gone = f"{len(self.removed)} gone; FAISS index: {self.ann}"
        if self.tiles is None:
            return f"{index_dir}: {self.total} images ({len(self.added)} embedded now, {gone})"
        return (
            f"{index_dir}: {self.total} scenes ({len(self.added)} tiled now: {len(self.tiles)} windows, "
            f"{self.skipped} without data skipped; {gone})"
        )


def build_index(
    image_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    model: RetrievalModel,
    batch_size: int = 32,
    ann: ANNConfig | None = None,
    shards: Shards | None = None,
    tiling: Tiling | None = None,
    calibration_texts: list[str] | None = None,
    dtype: str | None = None,
) -> IndexUpdate:
    """Create or update the index of ``image_dir`` in ``index_dir``, embedding only images not yet in it,
    and extend or build its FAISS index when ``ann`` asks for one at this size (default ``ANNConfig()``:
    exact below 100,000 images, IVF above, exact again when IVF cannot reach its target recall). Given
    ``tiling``, the files are scenes, cut into windows (:mod:`rsitr_hf.search.scenes`), and each window with
    valid pixels is a row: a scene index. Given ``calibration_texts`` (real text queries), a FAISS index
    measures its recall on them too. ``dtype``: how a new index stores its embeddings (``float32``, or
    ``float16``: half the disk; an existing index keeps its own).

    Under ``accelerate launch`` every process calls this with its ``shards``: the main process holds the
    index's lock, plans the update, and writes what all of them embed. A second indexer waits for the lock.
    """
    shards = shards or Shards.single()
    if not shards.is_main:
        root, plan = shards.from_main()
        for _ in embedded_rounds(plan, root, model, batch_size, shards):
            pass
        return plan
    folder = Path(index_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / LOCK_FILE)):
        try:
            index, plan = plan_update(image_dir, folder, model, tiling, dtype)
        except Exception as error:
            shards.from_main(error=error)  # the other processes stop with its message
            raise
        shards.from_main((index.root, plan))
        return apply_update(index, plan, model, batch_size, shards, ann or ANNConfig(), calibration_texts)


def plan_update(
    image_dir: str | os.PathLike,
    folder: Path,
    model: RetrievalModel,
    tiling: Tiling | None = None,
    dtype: str | None = None,
) -> tuple[ImageIndex, IndexUpdate]:
    """The index as committed (a format-2 index converted first; a new, empty one when there is none), with
    the leftovers of an interrupted run removed, and what updating it means: images (or scenes, whose
    windows it lists) to add and to drop."""
    root = str(Path(image_dir).resolve())
    files = list_images(root)
    if not (folder / MANIFEST_FILE).is_file() and (folder / FORMAT_2_FILE).is_file():
        convert_format_2(folder)
    if (folder / MANIFEST_FILE).is_file():
        index = ImageIndex.load(folder)
        check_same_model(index, model, folder)
        if index.root != root:
            raise SearchError(f"{folder} indexes {index.root}, not {root}: use another index folder")
        check_same_tiling(index, tiling, folder)
        if dtype is not None and dtype != index.manifest.dtype:
            raise SearchError(f"{folder} stores its embeddings as {index.manifest.dtype}, not {dtype}")
    else:
        if dtype is not None and dtype not in STORED_DTYPES:
            raise SearchError(f"--dtype: expected one of {', '.join(STORED_DTYPES)}, got {dtype!r}")
        dim = model.model.config.projection_dim
        index = ImageIndex(folder, Manifest(root, model.identity, dim, dtype or "float32", tiling), [])
    sweep(folder, index.manifest)  # what an interrupted run left
    present, known, pending = set(files), index.names(), set(index.manifest.pending)
    added = [name for name in files if name not in known or name in pending]
    removed = sorted(name for name in known | pending if name not in present)
    plan = IndexUpdate(added, removed, len(files))
    if tiling is not None:
        plan.scenes = {name: describe_scene(Path(root) / name, tiling) for name in added}
        plan.tiles = [(name, window) for name, info in plan.scenes.items() for window in info.windows()]
    return index, plan


def check_same_tiling(index: ImageIndex, tiling: Tiling | None, index_dir) -> None:
    """An index of images stays one, and a scene index keeps its tiling (its windows would not compare)."""
    built = index.tiling
    if (built is None) != (tiling is None):
        kinds = ("an index of images", "a scene index (rsitr-search index --scenes)")
        raise SearchError(f"{index_dir} is {kinds[built is not None]}, not {kinds[tiling is not None]}")
    if built is not None and built != tiling:
        raise SearchError(
            f"{index_dir} cuts its scenes as {built.to_dict()}, not {tiling.to_dict()}: use the same --tile, "
            "--stride, --tile_unit and --bands, or another index folder"
        )


def embedded_rounds(plan: IndexUpdate, root: str, model: RetrievalModel, batch_size: int, shards: Shards):
    """Embed ``plan.work()`` (images, or windows of scenes, under ``root``) in batches of ``batch_size``, one
    batch per process per round. Yields, on every process, how many items are done and each round's ``(B,
    D)`` embeddings in order (each row computed from the same batch as in a one-process run; a window without
    valid pixels is a row of NaN)."""
    work = plan.work()
    batches = [work[start : start + batch_size] for start in range(0, len(work), batch_size)]
    done = 0

    def read_batch(batch: list[tuple[str, Window | None]]) -> list[PIL.Image.Image | None]:
        if plan.tiles is not None:
            return read_tiles(root, batch, plan.scenes)
        return [read_image(Path(root) / name) for name, _ in batch]

    def embed(images: list[PIL.Image.Image | None]) -> torch.Tensor:
        valid = [image for image in images if image is not None]
        if len(valid) == len(images):
            return model.embed_images(images)
        rows = torch.full((len(images), model.model.config.projection_dim), torch.nan)
        if valid:
            rows[[image is not None for image in images]] = model.embed_images(valid).float().cpu()
        return rows

    desc = "embedding images" if plan.tiles is None else "embedding scene windows"
    for embedded in embed_batches(batches, embed, shards, load=read_batch, batches_per_round=1, desc=desc):
        done += sum(len(piece) for piece in embedded)
        yield done, embedded


class ShardWriter:
    """Collects embedded rows and writes them as shards of ``index``, committing each: a shard covers a
    span of the plan's work (its rows, and for scenes every scene of that span, windowless ones included)."""

    def __init__(self, index: ImageIndex, plan: IndexUpdate):
        self.index, self.plan, self.work = index, plan, plan.work()
        self.written = 0  # work items written so far
        self.embeddings: list[np.ndarray] = []
        self.items: list[tuple[str, Window | None]] = []

    def append(self, done: int, block: torch.Tensor) -> None:
        """The embeddings of work items ``done - len(block)`` to ``done``; rows of NaN are skipped."""
        valid = ~block.isnan().any(dim=1)
        span = self.work[done - len(block) : done]
        self.items += [item for item, ok in zip(span, valid.tolist(), strict=True) if ok]
        self.embeddings.append(block[valid].float().numpy())
        self.plan.skipped += len(block) - int(valid.sum())

    @property
    def rows(self) -> int:
        return len(self.items)

    def flush(self, done: int) -> None:
        """Write the rows collected (work up to ``done``) as a shard and commit it; scenes with windows
        after ``done`` are pending (tiled again should the run stop here)."""
        manifest = self.index.manifest
        span = self.work[self.written : done]
        if span:
            first = manifest.next_id
            ids = list(range(first, first + len(self.items)))
            names = [name for name, _ in self.items]
            if manifest.tiling is None:
                rows, scenes = image_rows(ids, names), None
            else:
                windows = [window for _, window in self.items]
                footprints = footprints_of(self.items, self.plan.scenes)
                rows = scene_rows(ids, names, windows, footprints)
                scenes = {name: self.plan.scenes[name] for name, _ in span}
            embeddings = np.concatenate(self.embeddings) if self.embeddings else np.empty((0, manifest.dim))
            entry = write_shard(self.index.folder, embeddings, rows, manifest.dtype, scenes, first)
            self.index.shards.append(Shard(self.index.folder, entry, manifest))
            manifest.shards.append(entry)
            manifest.next_id = entry.end_id
        manifest.pending = list(
            dict.fromkeys(name for name, window in self.work[done:] if window is not None)
        )
        self.written, self.embeddings, self.items = done, [], []
        commit(self.index)


def footprints_of(items: list[tuple[str, Window]], scenes: dict[str, SceneInfo]) -> list:
    """The WGS84 footprint of each ``(scene, window)`` (``None`` without georeference), a scene at a time."""
    footprints: list = [None] * len(items)
    by_scene: dict[str, list[int]] = {}
    for position, (name, _) in enumerate(items):
        by_scene.setdefault(name, []).append(position)
    for name, positions in by_scene.items():
        for position, ring in zip(
            positions, scenes[name].footprints([items[p][1] for p in positions]), strict=True
        ):
            footprints[position] = ring
    return footprints


def commit(index: ImageIndex) -> None:
    """Make what ``index.manifest`` names the index (the one atomic step), then remove what it no longer
    names."""
    write_json(index.folder / MANIFEST_FILE, index.manifest.to_dict(), indent=1)
    sweep(index.folder, index.manifest)


def apply_update(
    index: ImageIndex,
    plan: IndexUpdate,
    model: RetrievalModel,
    batch_size: int,
    shards: Shards,
    ann: ANNConfig,
    calibration_texts: list[str] | None = None,
) -> IndexUpdate:
    """Delete ``plan.removed`` (and scenes an interruption left half done), append the embeddings of
    ``plan.work()`` as new shards (committing one every ``SAVE_EVERY_SECONDS`` or ``SHARD_ROWS`` rows), then
    extend or build the FAISS index and commit."""
    manifest = index.manifest
    dropped = set(plan.removed) | set(manifest.pending)
    for number, shard in enumerate(index.shards):
        entry = shard.with_deleted(index.folder, dropped)
        if entry is not None:
            shard.entry = manifest.shards[number] = entry
    writer, last_save = ShardWriter(index, plan), time.monotonic()
    for done, embedded in embedded_rounds(plan, index.root, model, batch_size, shards):
        writer.append(done, torch.cat(embedded))
        due = time.monotonic() - last_save >= SAVE_EVERY_SECONDS or writer.rows >= SHARD_ROWS
        if due and done < len(writer.work):
            writer.flush(done)
            last_save = time.monotonic()
    writer.flush(len(writer.work))
    index = ImageIndex(index.folder, manifest, index.shards, index.ann)  # sees the new shards and deletions
    texts = None
    if calibration_texts and ann.uses_faiss(len(index)):
        texts = model.embed_texts(calibration_texts).numpy()
    plan.ann = update_ann(index, ann, texts)
    plan.calibration = index.ann.calibration if index.ann is not None else None
    return plan


def update_ann(index: ImageIndex, config: ANNConfig, queries: np.ndarray | None = None) -> str:
    """Bring the FAISS index of ``index`` up to date and commit: nothing to do when no row was appended since
    it was chosen with these settings (deleted rows are left out as it searches); else extend it with the
    rows added since it was saved when it is still what ``config`` asks for at this size, or build one;
    either way its recall is measured again (on a held-out sample of the rows added and on ``queries``,
    real text queries' embeddings, when given). With ``auto``, an index whose calibration cannot reach the
    target is replaced by exact search, and the manifest says why. Returns what was done."""
    manifest, previous = index.manifest, index.ann
    if manifest.ann_config == asdict(config) and not len(index.vectors.since(manifest.ann_through)):
        if previous is not None:
            return f"unchanged {previous.factory}"
        if manifest.exact_because is not None:
            return f"none, exact search ({manifest.exact_because})"
    done, built, because = "none", None, None
    if config.uses_faiss(len(index)) and len(index):
        if previous is not None and previous.can_extend(config, len(index)):
            previous.add(index.vectors.since(index.covers), store=index.vectors, queries=queries)
            built, done = previous, f"extended {previous.factory}"
        else:
            built = ANNIndex.build(index.vectors, config, queries)
            done = f"built {built.factory}"
        measured = built.calibration
        if config.kind == "auto" and measured is not None and not measured.reached:
            because = (
                f"auto: {built.factory} reached recall@{measured.k} {measured.recall:.3f} at most "
                f"({measured.parameter} {measured.value}), below the target {measured.target:g}"
            )
            built, done = None, f"none, exact search ({because})"
    if built is not None:
        file_name = new_name("ann", ".faiss")
        settings = built.save(index.folder / file_name)
        manifest.ann = {"file": file_name, "settings": settings, "vectors": len(built)}
    else:
        manifest.ann = None
    manifest.ann_through, manifest.ann_config, manifest.exact_because = (
        manifest.next_id,
        asdict(config),
        because,
    )
    index.ann = built
    commit(index)
    return done


def compact(index_dir: str | os.PathLike) -> str:
    """Rewrite the shards of the index in ``index_dir`` that have deletions, without the deleted rows (row
    ids are kept), remove those rows from the FAISS index (built again where its type cannot remove), and
    commit. Returns what it did, in a line."""
    folder = Path(index_dir)
    with FileLock(str(folder / LOCK_FILE)):
        index = ImageIndex.load(folder)
        manifest, removed, rewritten, dead_ids = index.manifest, 0, 0, []
        for number, shard in enumerate(list(index.shards)):
            dead = shard.dead()
            if dead is None:
                continue
            dead_ids.append(shard.ids()[dead])
            rows = shard.rows().filter(pa.array(~dead))
            scenes = None if manifest.tiling is None else shard.scenes()
            embeddings = np.asarray(shard.embeddings[np.flatnonzero(~dead)])
            entry = write_shard(
                folder, embeddings, rows, manifest.dtype, scenes, shard.entry.first_id, shard.entry.end_id
            )
            index.shards[number], manifest.shards[number] = Shard(folder, entry, manifest), entry
            removed, rewritten = removed + int(dead.sum()), rewritten + 1
        if not rewritten:
            return f"{folder}: nothing to compact ({index.describe()}, no deletions)"
        ann, index = index.ann, ImageIndex(folder, manifest, index.shards)
        if ann is not None:
            if ann.remove(np.concatenate(dead_ids)):
                index.ann = ann
                ann.vectors, ann.excluded = index.vectors, None
                file_name = new_name("ann", ".faiss")
                settings = ann.save(folder / file_name)
                manifest.ann = {**manifest.ann, "file": file_name, "settings": settings, "vectors": len(ann)}
            else:
                update_ann(index, ann.config)
        commit(index)
        return (
            f"{folder}: {rewritten} shard(s) rewritten without their {removed:,} deleted rows "
            f"({index.describe()})"
        )


def convert_format_2(folder: Path) -> None:
    """Turn rsitr_hf 0.2's index (``index.json`` listing every file, one safetensors file of embeddings) into
    a store of one shard with the same rows, then remove the old files. Its FAISS index is left out: the
    update that converts builds one as it is configured."""
    from safetensors import safe_open

    advice = f"delete {folder} and build it again with rsitr-search index"
    try:
        metadata = json.loads((folder / FORMAT_2_FILE).read_text(encoding="utf-8"))
        if metadata.get("format_version") != 2:
            raise ValueError(f"format {metadata.get('format_version', 1)}, which this version cannot convert")
        files, embeddings_file = metadata["files"], metadata["embeddings_file"]
        if not all(isinstance(name, str) and confined(name) for name in [*files, embeddings_file]):
            raise ValueError("it names a file outside its folder")
        with safe_open(folder / embeddings_file, framework="np") as tensors:
            embeddings = np.asarray(tensors.get_tensor("image_embeds"), dtype=np.float32)
        if embeddings.shape[0] != len(files):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(files)} files")
        tiles = metadata.get("scene_tiles")
        tiling = None if tiles is None else Tiling.from_dict(tiles["tiling"])
        model = ModelIdentity(**metadata["model"])
        manifest = Manifest(metadata["root"], model, embeddings.shape[1], "float32", tiling)
        ids = list(range(len(files)))
        if tiling is None:
            rows, scenes = image_rows(ids, files), None
        else:
            scenes = {name: SceneInfo(**info) for name, info in tiles["scenes"].items()}
            windows = [tuple(int(value) for value in window) for window in tiles["windows"]]
            items = list(zip(files, windows, strict=True))
            rows = scene_rows(ids, files, windows, footprints_of(items, scenes))
            manifest.pending = list(tiles["pending"])
    except Exception as error:  # a damaged or crafted old index: nothing is converted
        raise SearchError(
            f"{folder / FORMAT_2_FILE}: cannot convert it ({first_line(error)}): {advice}"
        ) from None
    entry = write_shard(folder, embeddings, rows, "float32", scenes, 0)
    manifest.shards, manifest.next_id = [entry], entry.end_id
    commit(ImageIndex(folder, manifest, []))
    for old in [folder / FORMAT_2_FILE, *folder.glob("embeddings-*.safetensors")]:
        old.unlink()
