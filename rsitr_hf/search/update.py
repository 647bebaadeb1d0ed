"""Building and updating an index: only new images (or scenes) are embedded, into new shards; gone ones are
recorded as deletions; the FAISS index is extended (or built, or left out when exact search serves better);
``compact`` rewrites the shards that have deletions. ``rsitr-search index`` / ``compact`` call these.

Every change is committed by replacing the manifest (:mod:`rsitr_hf.search.store`): a kill at any point
leaves the previous index, whose answers are unchanged; the next run removes what the kill left. One
indexer at a time (a file lock, ``INDEX_DIR/.lock``). A long run commits a shard of what it has embedded
every ``SAVE_EVERY_SECONDS`` or ``SHARD_ROWS`` rows, so an interruption keeps its work.

Embedding can be spread over the processes of ``accelerate launch`` (machines sharing the index folder):
each process embeds a contiguous share of the batches and writes its own shards; only their entries (a few
numbers each) reach the main process, which commits the manifest. The store equals a one-process build's,
row id for row id (:func:`embed_into_shards`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow as pa
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from ..evaluation.inference import ModelIdentity, RetrievalModel
from ..utils.distributed import Shards, embedded_locally
from ..utils.errors import InputError, first_line
from ..utils.files import FileFingerprint, write_json
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
    ShardEntry,
    sweep,
    write_shard,
)

LOCK_FILE = ".lock"
SAVE_EVERY_SECONDS = 300  # a long run commits what it has embedded (a new shard: nothing is rewritten)
SHARD_ROWS = 1 << 20  # and at least every this many rows (2 GB of 512-dimensional float32)
SYNC_BATCHES = 8  # each process's batches between two checks with the others (errors, commits)


@dataclass
class IndexUpdate:
    """What :func:`build_index` did: images (or scenes) embedded now, dropped (gone from the folder), the
    total, what became of the FAISS index (``"none"``, ``"built <factory>"``, ``"extended <factory>"``,
    ``"unchanged <factory>"``, or ``"none, exact search (auto: ...)"`` when exact search replaced one below
    its target) and the recall it measured. For
    scenes also: the windows of the scenes added (``tiles``, in row order), how each added scene is read
    (``scenes``), the windows without valid pixels (``skipped``: not indexed) and the scenes tiled again
    because their file changed since they were tiled (``changed``: among ``added``)."""

    added: list[str]
    removed: list[str]
    total: int
    ann: str = "none"
    calibration: Calibration | None = None
    tiles: list[tuple[str, Window]] | None = None
    scenes: dict[str, SceneInfo] = field(default_factory=dict)
    skipped: int = 0
    changed: list[str] = field(default_factory=list)

    def work(self) -> list[tuple[str, Window | None]]:
        """What is embedded, in row order: ``(image, None)`` for each image, else ``(scene, window)``."""
        return self.tiles if self.tiles is not None else [(name, None) for name in self.added]

    def describe(self, index_dir) -> str:
        gone = f"{len(self.removed)} gone; FAISS index: {self.ann}"
        if self.tiles is None:
            return f"{index_dir}: {self.total} images ({len(self.added)} embedded now, {gone})"
        changed = f", {len(self.changed)} of them changed since they were tiled" if self.changed else ""
        return (
            f"{index_dir}: {self.total} scenes ({len(self.added)} tiled now{changed}: {len(self.tiles)} "
            f"windows, {self.skipped} without data skipped; {gone})"
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
    valid pixels is a row: a scene index; a scene whose file changed since it was tiled (its fingerprint:
    size, modification time, first and last 64 KiB) is tiled again. Given ``calibration_texts`` (real text
    queries), a FAISS index measures its recall on them too. ``dtype``: how a new index stores its
    embeddings (``float32``, or ``float16``: half the disk; an existing index keeps its own).

    Under ``accelerate launch`` (any number of machines sharing ``index_dir``) every process calls this
    with its ``shards``: the main process holds the index's lock and plans the update; each process embeds a
    contiguous share of the work and writes its own shards; the main process commits the manifest that names
    them (:func:`embed_into_shards`). A second indexer waits for the lock.
    """
    shards, folder = shards or Shards.single(), Path(index_dir)
    if not shards.is_main:
        plan, manifest = shards.from_main()
        embed_into_shards(folder, manifest, plan, model, batch_size, shards)
        return plan
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / LOCK_FILE)):
        try:
            index, plan = plan_update(image_dir, folder, model, tiling, dtype)
        except Exception as error:
            shards.from_main(error=error)  # the other processes stop with its message
            raise
        shards.from_main((plan, index.manifest))
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
    windows it lists) to add and to drop, and scenes to tile again because their file changed."""
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
    kept = [name for name in files if name in known and name not in pending]
    changed = sorted(index.scene_changes(kept)) if tiling is not None else []
    added = [name for name in files if name not in known or name in pending or name in changed]
    removed = sorted(name for name in known | pending if name not in present)
    plan = IndexUpdate(added, removed, len(files), changed=changed)
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


def embedder(plan: IndexUpdate, root: str, model: RetrievalModel):
    """``(read, embed)`` for the plan's work: reading a batch of images (or of windows of scenes) under
    ``root``, and embedding it into ``(B, D)`` rows (a window without valid pixels is a row of NaN)."""

    def read_batch(batch: list[tuple[str, Window | None]]) -> list[PIL.Image.Image | None]:
        if plan.tiles is not None:
            return read_tiles(root, batch, plan.scenes)
        return [read_image(Path(root) / name) for name, _ in batch]

    def embed(images: list[PIL.Image.Image | None]) -> torch.Tensor:
        valid = [image for image in images if image is not None]
        if len(valid) == len(images):
            return model.embed_images(images).float().cpu()
        rows = torch.full((len(images), model.model.config.projection_dim), torch.nan)
        if valid:
            rows[[image is not None for image in images]] = model.embed_images(valid).float().cpu()
        return rows

    return read_batch, embed


class ShardBuffer:
    """Embedded rows of one process, written as a shard when asked: the row of work item ``i`` has the id
    ``first_id + i`` (the same in a one-process run; items without valid pixels leave their id unused), and
    a scene index's shard lists every scene of the span it covers, windowless ones included."""

    def __init__(self, folder: Path, manifest: Manifest, plan: IndexUpdate, first_id: int):
        self.folder, self.manifest, self.plan, self.first_id = folder, manifest, plan, first_id
        self.work, self.span, self.skipped = plan.work(), None, 0
        self.ids: list[int] = []
        self.embeddings: list[np.ndarray] = []

    @property
    def rows(self) -> int:
        return len(self.ids)

    def append(self, start: int, block: torch.Tensor) -> None:
        """The embeddings of work items ``start`` to ``start + len(block)``; rows of NaN are skipped."""
        valid = ~block.isnan().any(dim=1)
        self.ids += [self.first_id + start + i for i, ok in enumerate(valid.tolist()) if ok]
        self.embeddings.append(block[valid].numpy())
        self.skipped += len(block) - int(valid.sum())
        self.span = (start if self.span is None else self.span[0], start + len(block))

    def write(self) -> ShardEntry | None:
        """Write what was appended since the last write as a shard (not yet part of the index)."""
        if self.span is None:
            return None
        items = [self.work[i - self.first_id] for i in self.ids]
        names = [name for name, _ in items]
        if self.manifest.tiling is None:
            rows, scenes = image_rows(self.ids, names), None
        else:
            windows = [window for _, window in items]
            rows = scene_rows(self.ids, names, windows, footprints_of(items, self.plan.scenes))
            scenes = {name: self.plan.scenes[name] for name, _ in self.work[self.span[0] : self.span[1]]}
        embeddings = np.concatenate(self.embeddings) if self.embeddings else np.empty((0, self.manifest.dim))
        first, end = (self.first_id + position for position in self.span)
        entry = write_shard(self.folder, embeddings, rows, self.manifest.dtype, scenes, first, end)
        self.span, self.ids, self.embeddings = None, [], []
        return entry


def embed_into_shards(
    folder: Path,
    manifest: Manifest,
    plan: IndexUpdate,
    model: RetrievalModel,
    batch_size: int,
    shards: Shards,
    committed=None,
) -> None:
    """Embed ``plan.work()`` in batches of ``batch_size`` (each row computed from the same batch as in a
    one-process run), each process a contiguous share of the batches, and write what each embeds as its own
    shards: no embedding leaves the process that computed it. Every ``SYNC_BATCHES`` batches the processes
    compare notes (an input error on one stops them all, naming it) and, every ``SAVE_EVERY_SECONDS`` or
    ``SHARD_ROWS`` rows and at the end, each writes a shard; the main process then calls ``committed(entries,
    pending, next_id)`` with the shards written, the scenes not yet fully embedded and, at the end, the next
    free row id."""
    work, first_id = plan.work(), manifest.next_id
    batches = [(start, work[start : start + batch_size]) for start in range(0, len(work), batch_size)]
    share = math.ceil(len(batches) / shards.count)
    mine = batches[shards.rank * share : (shards.rank + 1) * share]
    done = end = min(len(work), shards.rank * share * batch_size)
    if mine:
        end = mine[-1][0] + len(mine[-1][1])
    read_batch, embed = embedder(plan, manifest.root, model)
    buffer, last_save = ShardBuffer(folder, manifest, plan, first_id), time.monotonic()
    embedded = embedded_locally([batch for _, batch in mine], embed, shards, load=read_batch)
    desc = "embedding images" if plan.tiles is None else "embedding scene windows"
    every = SYNC_BATCHES if shards.count > 1 else 1  # alone, it checks the time after every batch
    syncs = max(1, math.ceil(share / every))
    with tqdm(total=end - done, desc=desc, disable=not (work and shards.is_main)) as progress:
        for sync in range(syncs):
            error = None
            try:
                for (start, _), (batch, block) in zip(mine[:every], embedded, strict=False):
                    buffer.append(start, block)
                    done = start + len(batch)
                    progress.update(len(batch))
                mine = mine[every:]
            except InputError as failure:
                error = failure
            rows = shards.gather([buffer.rows], error)  # the other processes stop with its message
            if error is not None:
                raise error
            last = sync == syncs - 1
            due = last or max(rows) >= SHARD_ROWS or time.monotonic() - last_save >= SAVE_EVERY_SECONDS
            if not shards.from_main(due):
                continue
            reports = shards.gather([(buffer.write(), done, end, buffer.skipped)])
            last_save = time.monotonic()
            if committed is not None:
                plan.skipped = sum(skipped for *_, skipped in reports)
                undone = [item for _, done_at, end_at, _ in reports for item in work[done_at:end_at]]
                pending = list(dict.fromkeys(name for name, window in undone if window is not None))
                entries = [entry for entry, *_ in reports if entry is not None]
                committed(entries, pending, first_id + len(work) if last else None)


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
    """Delete ``plan.removed`` (and scenes an interruption left half done, and those that changed), append
    the embeddings of ``plan.work()`` as new shards (committing one every ``SAVE_EVERY_SECONDS`` or
    ``SHARD_ROWS`` rows), then extend or build the FAISS index and commit."""
    manifest = index.manifest
    dropped = set(plan.removed) | set(manifest.pending) | set(plan.changed)
    for number, shard in enumerate(index.shards):
        entry = shard.with_deleted(index.folder, dropped)
        if entry is not None:
            shard.entry = manifest.shards[number] = entry

    def committed(entries: list[ShardEntry], pending: list[str], next_id: int | None) -> None:
        index.shards.extend(Shard(index.folder, entry, manifest) for entry in entries)
        index.shards.sort(key=lambda shard: shard.entry.first_id)
        manifest.shards = [shard.entry for shard in index.shards]
        ends = [entry.end_id for entry in entries]
        manifest.next_id = next_id if next_id is not None else max([manifest.next_id, *ends])
        manifest.pending = pending
        commit(index)

    embed_into_shards(index.folder, manifest, plan, model, batch_size, shards, committed)
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
            built = ANNIndex.build(index.vectors, config, queries, index.folder)
            done = f"built {built.factory}"
        measured = built.calibration
        if config.kind == "auto" and measured is not None and not measured.reached:
            because = (
                f"auto: {built.factory} reached recall@{measured.k} {measured.recall:.3f} at most "
                f"({measured.parameter} {measured.value}), below the target {measured.target:g}"
            )
            built, done = None, f"none, exact search ({because})"
    if built is not None:
        manifest.ann = {"settings": built.save(index.folder), "vectors": len(built)}
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
                manifest.ann = {"settings": ann.save(folder), "vectors": len(ann)}
            else:  # built again, from the rows kept
                manifest.ann_config = None
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
            scenes = {
                name: SceneInfo.from_dict(
                    {**info, "fingerprint": asdict(fingerprint_now(manifest.root, name))}
                )
                for name, info in tiles["scenes"].items()
            }
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


def fingerprint_now(root: str, name: str) -> FileFingerprint:
    """The fingerprint of a scene converted from format 2, which kept none: of its file as it is now (an
    empty one when it is gone, as the update that converts drops it)."""
    path = Path(root) / name
    return FileFingerprint.of(path) if path.is_file() else FileFingerprint(0, 0, "")
