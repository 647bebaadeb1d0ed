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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from filelock import FileLock
from safetensors.torch import save_file

from ..data.images import UnreadableImageError, read_rgb
from ..utils.distributed import Shards, embed_batches
from ..utils.errors import InputError, first_line
from ..utils.files import write_json
from .ann import ANNConfig, ANNIndex, Calibration
from .model import ModelIdentity, RetrievalModel, SearchError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
INDEX_FILE, EMBEDDINGS_FILE = "index.json", "embeddings.safetensors"  # the latter: format 1's fixed name
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
class ImageIndex:
    """Embeddings of the images of ``root``: row ``i`` of ``embeddings`` is ``root / files[i]``."""

    root: str
    files: list[str]
    embeddings: torch.Tensor
    model: ModelIdentity
    ann: ANNIndex | None = None  # a FAISS index over ``embeddings`` (else search is exact)

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
        if self.ann is not None:
            ann_file = f"ann-{uuid.uuid4().hex[:12]}.faiss"
            metadata["ann"] = {"file": ann_file, "settings": self.ann.save(index_dir / ann_file)}
        write_json(index_dir / INDEX_FILE, metadata, indent=1)
        named = {embeddings_file, metadata.get("ann", {}).get("file")}
        for stale in [index_dir / EMBEDDINGS_FILE, *index_dir.glob("embeddings-*"), *index_dir.glob("ann-*")]:
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
            root, files, model = metadata["root"], metadata["files"], ModelIdentity(**metadata["model"])
            embeddings_file = metadata.get("embeddings_file", EMBEDDINGS_FILE)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise SearchError(f"{index_dir / INDEX_FILE} is damaged ({error}): {rebuild}") from None
        outside = next((name for name in files if not isinstance(name, str) or not confined(name)), None)
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
        ann = load_ann(index_dir, metadata.get("ann"), len(files), rebuild)
        if ann is not None:
            ann.vectors = mapped  # re-ranks a quantised index, read from disk as needed
        return cls(root, files, embeddings, model, ann)


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
    """What :func:`build_index` did: images embedded now, dropped (gone from the folder), the total, what
    became of the FAISS index (``"none"``, ``"built <factory>"`` or ``"extended <factory>"``) and the recall
    it measured (``None`` for exact search)."""

    added: list[str]
    removed: list[str]
    total: int
    ann: str = "none"
    calibration: Calibration | None = None


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
) -> IndexUpdate:
    """Create or update the index of ``image_dir`` in ``index_dir``, embedding only images not yet in it,
    and extend or rebuild its FAISS index when ``ann`` asks for one at this size (default ``ANNConfig()``:
    exact below 100,000 images, IVF above).

    Under ``accelerate launch`` every process calls this with its ``shards``: the main process holds the
    index's lock, plans the update, and appends and saves what all of them embed. A second indexer of the
    same index waits for the lock.
    """
    shards = shards or Shards.single()
    if not shards.is_main:
        root, plan = shards.from_main()
        for _ in embedded_rounds(plan.added, root, model, batch_size, shards):
            pass
        return plan
    Path(index_dir).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(index_dir) / LOCK_FILE)):
        try:
            index, plan = plan_update(image_dir, index_dir, model)
        except Exception as error:
            shards.from_main(error=error)  # the other processes stop with its message
            raise
        shards.from_main((index.root, plan))
        return apply_update(index, plan, Path(index_dir), model, batch_size, shards, ann or ANNConfig())


def plan_update(
    image_dir: str | os.PathLike, index_dir: str | os.PathLike, model: RetrievalModel
) -> tuple[ImageIndex, IndexUpdate]:
    """The index as saved (or a new, empty one) and what updating it means: images to add and to drop."""
    root = str(Path(image_dir).resolve())
    files = list_images(root)
    if (Path(index_dir) / INDEX_FILE).is_file():
        index = ImageIndex.load(index_dir)
        check_same_model(index, model, index_dir)
        if index.root != root:
            raise SearchError(f"{index_dir} indexes {index.root}, not {root}: use another index folder")
    else:
        index = ImageIndex(root, [], torch.empty(0, model.model.config.projection_dim), model.identity)
    present, known = set(files), set(index.files)
    added = [name for name in files if name not in known]
    removed = [name for name in index.files if name not in present]
    return index, IndexUpdate(added, removed, len(files))


def embedded_rounds(names: list[str], root: str, model: RetrievalModel, batch_size: int, shards: Shards):
    """Embed the images ``root / name`` in batches of ``batch_size``, one batch per process per round.
    Yields, on every process, each round's ``(B, D)`` embeddings in order (each row computed from the same
    batch as in a one-process run) and how many images are done."""
    batches = [names[start : start + batch_size] for start in range(0, len(names), batch_size)]
    done = 0

    def read_batch(batch: list[str]) -> list[PIL.Image.Image]:
        return [read_image(Path(root) / name) for name in batch]

    rounds = embed_batches(
        batches, model.embed_images, shards, load=read_batch, batches_per_round=1, desc="embedding images"
    )
    for embedded in rounds:
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
) -> IndexUpdate:
    """Drop ``plan.removed``, append the embeddings of ``plan.added`` (saving every ``SAVE_EVERY_SECONDS``,
    so that an interrupted run keeps its work), then extend or rebuild the FAISS index and save."""
    removed = set(plan.removed)
    keep = [row for row, name in enumerate(index.files) if name not in removed]
    previous_ann, previous_count = index.ann, len(index.files)
    kept_files, pieces = [index.files[row] for row in keep], [index.embeddings[keep]]
    last_save = time.monotonic()
    for done, embedded in embedded_rounds(plan.added, index.root, model, batch_size, shards):
        pieces += embedded
        if time.monotonic() - last_save >= SAVE_EVERY_SECONDS and done < len(plan.added):
            index.files, index.embeddings = kept_files + plan.added[:done], torch.cat(pieces)
            index.ann, pieces = None, [index.embeddings]  # the FAISS index is made at the end
            index.save(index_dir)
            last_save = time.monotonic()
    index.files, index.embeddings = kept_files + plan.added, torch.cat(pieces)
    extendable = not removed and previous_ann is not None and len(previous_ann) == previous_count
    index.ann, plan.ann = updated_ann(index.embeddings.numpy(), ann, previous_ann if extendable else None)
    plan.calibration = index.ann.calibration if index.ann is not None else None
    index.save(index_dir)
    return plan


def updated_ann(
    embeddings: np.ndarray, config: ANNConfig, previous: ANNIndex | None
) -> tuple[ANNIndex | None, str]:
    """The FAISS index for ``embeddings`` and what was done: ``previous`` (covering a prefix of the rows)
    extended with the new rows when it is still what ``config`` asks for at this size, else a new one; either
    way its recall is measured again on a held-out sample of the rows added (:meth:`ANNIndex.add`)."""
    if not config.uses_faiss(len(embeddings)) or len(embeddings) == 0:
        return None, "none"
    if previous is not None and previous.can_extend(config, len(embeddings)):
        previous.add(embeddings[len(previous) :], all_embeddings=embeddings)  # and measured again
        return previous, f"extended {previous.factory}"
    built = ANNIndex.build(embeddings, config)
    return built, f"built {built.factory}"
