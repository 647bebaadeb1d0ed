"""An image index: the embeddings of every image of a folder, saved atomically, updated incrementally (only
new images are embedded, gone ones dropped), optionally with a FAISS index over them, and only ever used
with the model that built it. ``rsitr-search index`` (:mod:`rsitr_hf.search.cli`) builds one; see there for
the layout on disk.

Embedding can be spread over the processes of ``accelerate launch``: batches are dealt out in turn by
:func:`rsitr_hf.utils.distributed.embed_batches`, the main process gathers them in order and saves one
index, equal to a one-process build. The embeddings so far are saved every ``SAVE_EVERY_SECONDS``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from filelock import FileLock
from safetensors.torch import save_file

from ..data.images import IMAGE_SUFFIXES, UnreadableImageError, read_rgb
from ..evaluation.inference import ModelIdentity, RetrievalModel
from ..utils.distributed import Shards, embed_batches
from ..utils.errors import InputError, first_line
from ..utils.files import write_json
from .ann import ANNConfig, ANNIndex, Calibration
from .errors import SearchError
from .scenes import SceneInfo, Tiling, Window, describe_scene, read_tiles

INDEX_FILE = "index.json"
INDEX_FORMAT_VERSION = 2
LOCK_FILE = ".lock"
SAVE_EVERY_SECONDS = 300  # an interrupted run keeps its work; each save rewrites all embeddings


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


@dataclass
class SceneTiles:
    """What a scene index adds to an image index: how its scenes were cut (``tiling``), each scene's
    :class:`~rsitr_hf.search.scenes.SceneInfo` (``scenes``, by name), the pixel window of each row
    (``windows[i]`` of scene ``files[i]``) and the scenes whose tiling an interruption cut short
    (``pending``: tiled again by the next run)."""

    tiling: Tiling
    scenes: dict[str, SceneInfo] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "tiling": self.tiling.to_dict(),
            "scenes": {name: asdict(info) for name, info in self.scenes.items()},
            "windows": [list(window) for window in self.windows],
            "pending": self.pending,
        }

    @classmethod
    def from_dict(cls, values: dict) -> SceneTiles:
        scenes = {name: SceneInfo(**info) for name, info in values["scenes"].items()}
        windows = [tuple(int(value) for value in window) for window in values["windows"]]
        return cls(Tiling.from_dict(values["tiling"]), scenes, windows, list(values["pending"]))


@dataclass
class ImageIndex:
    """Embeddings of the images of ``root``: row ``i`` of ``embeddings`` is ``root / files[i]``; in a scene
    index (``tiles`` set) it is the window ``tiles.windows[i]`` of the scene ``root / files[i]``."""

    root: str
    files: list[str]
    embeddings: torch.Tensor
    model: ModelIdentity
    ann: ANNIndex | None = None  # a FAISS index over ``embeddings`` (else search is exact)
    tiles: SceneTiles | None = None

    def describe(self) -> str:
        """``"1,204 images"`` or ``"1,204 tiles of 3 scenes"``."""
        if self.tiles is None:
            return f"{len(self.files):,} images"
        return f"{len(self.files):,} tiles of {len(self.tiles.scenes):,} scenes"

    def save(self, index_dir: str | os.PathLike) -> None:
        """Write the embeddings under a new name, then replace ``index.json`` (the rename that makes the new
        index the index), then delete embeddings files no longer named."""
        index_dir = Path(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        embeddings_file = f"embeddings-{uuid.uuid4().hex[:12]}.safetensors"
        save_file({"image_embeds": self.embeddings.contiguous()}, index_dir / embeddings_file)
        metadata = {
            "format_version": INDEX_FORMAT_VERSION,
            "root": self.root,
            "files": self.files,
            "embeddings_file": embeddings_file,
            "model": asdict(self.model),
        }
        if self.tiles is not None:
            metadata["scene_tiles"] = self.tiles.to_dict()
        if self.ann is not None:
            ann_file = f"ann-{uuid.uuid4().hex[:12]}.faiss"
            metadata["ann"] = {"file": ann_file, "settings": self.ann.save(index_dir / ann_file)}
        write_json(index_dir / INDEX_FILE, metadata, indent=1)
        named = {embeddings_file, metadata.get("ann", {}).get("file")}
        for stale in [*index_dir.glob("embeddings-*"), *index_dir.glob("ann-*")]:
            if stale.name not in named and stale.is_file():
                stale.unlink()

    @classmethod
    def load(cls, index_dir: str | os.PathLike) -> ImageIndex:
        """The index in ``index_dir``; a :class:`SearchError` saying how to rebuild it when it is damaged,
        or when it lists a path outside its image folder."""
        index_dir = Path(index_dir)
        if not (index_dir / INDEX_FILE).is_file():
            raise FileNotFoundError(f"{index_dir}: no image index here (build one with rsitr-search index)")
        rebuild = (
            f"delete {index_dir} and build it again with rsitr-search index IMAGE_DIR --index {index_dir}"
        )
        try:
            metadata = json.loads((index_dir / INDEX_FILE).read_text(encoding="utf-8"))
            if metadata.get("format_version") != INDEX_FORMAT_VERSION:
                raise ValueError(
                    f"format {metadata.get('format_version', 1)}, of an earlier rsitr_hf; this one reads "
                    f"format {INDEX_FORMAT_VERSION}"
                )
            root, files, model = metadata["root"], metadata["files"], ModelIdentity(**metadata["model"])
            embeddings_file = metadata["embeddings_file"]
            tiles = SceneTiles.from_dict(metadata["scene_tiles"]) if "scene_tiles" in metadata else None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
            raise SearchError(f"{index_dir / INDEX_FILE} is damaged ({error}): {rebuild}") from None
        named = files + (list(tiles.scenes) if tiles is not None else [])
        outside = next((name for name in named if not isinstance(name, str) or not confined(name)), None)
        if outside is not None or not confined(embeddings_file):
            raise SearchError(
                f"{index_dir / INDEX_FILE} lists {outside or embeddings_file!r}, outside its folder; an "
                f"index names only files inside the indexed folder ({root}): {rebuild}"
            )
        try:
            mapped = mapped_array(index_dir / embeddings_file, "image_embeds")
            embeddings = torch.from_numpy(mapped)
        except Exception as error:  # a missing file or key, a damaged header, a short file
            raise SearchError(
                f"{index_dir / embeddings_file} is damaged or missing ({error}): {rebuild}"
            ) from None
        if embeddings.ndim != 2 or embeddings.shape[0] != len(files):
            raise SearchError(
                f"{index_dir}: {embeddings_file} has {tuple(embeddings.shape)} embeddings for {len(files)} "
                f"files: {rebuild}"
            )
        if tiles is not None and (len(tiles.windows) != len(files) or not set(files) <= set(tiles.scenes)):
            raise SearchError(
                f"{index_dir / INDEX_FILE}: {len(tiles.windows)} windows for {len(files)} tiles, or tiles of "
                f"scenes it does not describe: {rebuild}"
            )
        ann = load_ann(index_dir, metadata.get("ann"), len(files), rebuild)
        if ann is not None:
            ann.vectors = mapped  # re-ranks a quantised index, read from disk as needed
        return cls(root, files, embeddings, model, ann, tiles)


SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def mapped_array(path: Path, key: str) -> np.ndarray:
    """Tensor ``key`` of the safetensors file ``path`` as a NumPy array memory-mapped (copy on write) rather
    than read: pages come from disk as rows are used, so an index larger than memory can be opened. The
    file format is safetensors' own: an 8-byte little-endian header length, a JSON header giving each
    tensor's dtype, shape and byte range, then the data."""
    with open(path, "rb") as file:
        header_length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(header_length))
    entry = header[key]
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    shape, (start, end) = tuple(entry["shape"]), entry["data_offsets"]
    if dtype is None or end - start != np.dtype(dtype).itemsize * int(np.prod(shape)):
        raise ValueError(f"tensor {key}: {entry['dtype']} {shape} in {end - start} bytes")
    if path.stat().st_size < 8 + header_length + end:
        raise ValueError(f"the file ends before tensor {key} does")
    if end == start:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="c", offset=8 + header_length + start, shape=shape)


def load_ann(index_dir: Path, entry: dict | None, num_files: int, rebuild: str) -> ANNIndex | None:
    """The FAISS index named in ``index.json`` (``None`` for an exact index), checked against the files."""
    if entry is None:
        return None
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not confined(name):
        raise SearchError(
            f"{index_dir / INDEX_FILE} names the ANN index {name!r}, not a file of {index_dir}: {rebuild}"
        )
    try:
        ann = ANNIndex.load(index_dir / name, entry["settings"])
    except InputError:
        raise
    except Exception as error:  # FAISS raises RuntimeError for damaged files
        raise SearchError(
            f"{index_dir / name} is damaged or missing ({first_line(error)}): {rebuild}"
        ) from None
    if len(ann) != num_files:
        raise SearchError(f"{index_dir / name} holds {len(ann)} vectors for {num_files} files: {rebuild}")
    return ann


@dataclass
class IndexUpdate:
    """What :func:`build_index` did: images (or scenes) embedded now, dropped (gone from the folder), the
    total, what became of the FAISS index (``"none"``, ``"built <factory>"`` or ``"extended <factory>"``) and
    the recall it measured (``None`` for exact search). For scenes also: the windows of the scenes added
    (``tiles``, in row order), how each added scene is read (``scenes``) and the windows without valid pixels
    (``skipped``: not indexed)."""

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


def build_index(
    image_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    model: RetrievalModel,
    batch_size: int = 32,
    ann: ANNConfig | None = None,
    shards: Shards | None = None,
    tiling: Tiling | None = None,
    calibration_texts: list[str] | None = None,
) -> IndexUpdate:
    """Create or update the index of ``image_dir`` in ``index_dir``, embedding only images not yet in it,
    and extend or rebuild its FAISS index when ``ann`` asks for one at this size (default ``ANNConfig()``:
    exact below 100,000 images, IVF above). Given ``tiling``, the files are scenes, cut into windows
    (:mod:`rsitr_hf.search.scenes`), and each window with valid pixels is a row: a scene index. Given
    ``calibration_texts`` (real text queries), a FAISS index measures its recall on them too.

    Under ``accelerate launch`` every process calls this with its ``shards``: the main process holds the
    index's lock, plans the update, and appends and saves what all of them embed. A second indexer of the
    same index waits for the lock.
    """
    shards = shards or Shards.single()
    if not shards.is_main:
        root, plan = shards.from_main()
        for _ in embedded_rounds(plan, root, model, batch_size, shards):
            pass
        return plan
    Path(index_dir).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(index_dir) / LOCK_FILE)):
        try:
            index, plan = plan_update(image_dir, index_dir, model, tiling)
        except Exception as error:
            shards.from_main(error=error)  # the other processes stop with its message
            raise
        shards.from_main((index.root, plan))
        config = ann or ANNConfig()
        return apply_update(
            index, plan, Path(index_dir), model, batch_size, shards, config, calibration_texts
        )


def plan_update(
    image_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    model: RetrievalModel,
    tiling: Tiling | None = None,
) -> tuple[ImageIndex, IndexUpdate]:
    """The index as saved (or a new, empty one) and what updating it means: images (or scenes, whose
    windows it lists) to add and to drop."""
    root = str(Path(image_dir).resolve())
    files = list_images(root)
    if (Path(index_dir) / INDEX_FILE).is_file():
        index = ImageIndex.load(index_dir)
        check_same_model(index, model, index_dir)
        if index.root != root:
            raise SearchError(f"{index_dir} indexes {index.root}, not {root}: use another index folder")
        check_same_tiling(index, tiling, index_dir)
    else:
        tiles = None if tiling is None else SceneTiles(tiling)
        empty = torch.empty(0, model.model.config.projection_dim)
        index = ImageIndex(root, [], empty, model.identity, tiles=tiles)
    present = set(files)
    complete = set(index.files) if index.tiles is None else set(index.tiles.scenes) - set(index.tiles.pending)
    added = [name for name in files if name not in complete]
    known = index.files if index.tiles is None else list(index.tiles.scenes)
    plan = IndexUpdate(added, [name for name in dict.fromkeys(known) if name not in present], len(files))
    if tiling is not None:
        plan.scenes = {name: describe_scene(Path(root) / name, tiling) for name in added}
        plan.tiles = [(name, window) for name, info in plan.scenes.items() for window in info.windows()]
    return index, plan


def check_same_tiling(index: ImageIndex, tiling: Tiling | None, index_dir) -> None:
    """An index of images stays one, and a scene index keeps its tiling (its windows would not compare)."""
    built = None if index.tiles is None else index.tiles.tiling
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


def apply_update(
    index: ImageIndex,
    plan: IndexUpdate,
    index_dir: Path,
    model: RetrievalModel,
    batch_size: int,
    shards: Shards,
    ann: ANNConfig,
    calibration_texts: list[str] | None = None,
) -> IndexUpdate:
    """Drop ``plan.removed`` (and scenes an interruption left half done), append the embeddings of
    ``plan.work()`` (saving every ``SAVE_EVERY_SECONDS``, so that an interrupted run keeps its work), then
    extend or rebuild the FAISS index and save."""
    dropped = set(plan.removed) | set(index.tiles.pending if index.tiles is not None else ())
    keep = [row for row, name in enumerate(index.files) if name not in dropped]
    previous_ann, previous_count = index.ann, len(index.files)
    work = plan.work()
    files, pieces = [index.files[row] for row in keep], [index.embeddings[keep]]
    if index.tiles is not None:
        tiles = index.tiles
        tiles.windows = [tiles.windows[row] for row in keep]
        tiles.scenes = {name: info for name, info in tiles.scenes.items() if name not in dropped}
        tiles.scenes.update(plan.scenes)
    last_save, done = time.monotonic(), 0
    for done, embedded in embedded_rounds(plan, index.root, model, batch_size, shards):
        block = torch.cat(embedded)
        valid = ~block.isnan().any(dim=1)
        kept = [item for item, ok in zip(work[done - len(block) : done], valid.tolist(), strict=True) if ok]
        pieces.append(block[valid])
        files += [name for name, _ in kept]
        if index.tiles is not None:
            index.tiles.windows += [window for _, window in kept]
        plan.skipped += len(block) - len(kept)
        if time.monotonic() - last_save >= SAVE_EVERY_SECONDS and done < len(work):
            index.files, index.embeddings = list(files), torch.cat(pieces)
            if index.tiles is not None:  # scenes with windows still to come are tiled again next time
                index.tiles.pending = list(dict.fromkeys(name for name, _ in work[done:]))
            index.ann, pieces = None, [index.embeddings]  # the FAISS index is made at the end
            index.save(index_dir)
            last_save = time.monotonic()
    index.files, index.embeddings = files, torch.cat(pieces)
    if index.tiles is not None:
        index.tiles.pending = []
    extendable = not dropped and previous_ann is not None and len(previous_ann) == previous_count
    measured_on_texts = calibration_texts and ann.uses_faiss(len(index.files))
    texts = model.embed_texts(calibration_texts).numpy() if measured_on_texts else None
    previous = previous_ann if extendable else None
    index.ann, plan.ann = updated_ann(index.embeddings.numpy(), ann, previous, texts)
    plan.calibration = index.ann.calibration if index.ann is not None else None
    index.save(index_dir)
    return plan


def updated_ann(
    embeddings: np.ndarray, config: ANNConfig, previous: ANNIndex | None, queries: np.ndarray | None = None
) -> tuple[ANNIndex | None, str]:
    """The FAISS index for ``embeddings`` and what was done: ``previous`` (covering a prefix of the rows)
    extended with the new rows when it is still what ``config`` asks for at this size, else a new one; either
    way its recall is measured again on a held-out sample of the rows added and on ``queries`` (real text
    queries' embeddings), when given (:meth:`ANNIndex.add`)."""
    if not config.uses_faiss(len(embeddings)) or len(embeddings) == 0:
        return None, "none"
    if previous is not None and previous.can_extend(config, len(embeddings)):
        previous.add(
            embeddings[len(previous) :], all_embeddings=embeddings, queries=queries
        )  # measured again
        return previous, f"extended {previous.factory}"
    built = ANNIndex.build(embeddings, config, queries)
    return built, f"built {built.factory}"
