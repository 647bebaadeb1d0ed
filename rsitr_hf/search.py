"""Retrieval in practice: index a folder of images once, then search it by text (``rsitr-search``).

    rsitr-search index IMAGE_DIR --index INDEX_DIR --model BASE [--adapter ADAPTER] [--batch_size 32]
        [--ann auto|exact|flat|ivf|hnsw]
    rsitr-search query --index INDEX_DIR --text "many planes parked at the airport" [--text ...] [--top_k 5]
    rsitr-search query --index INDEX_DIR --image PATH [--captions CAPTIONS.txt] [--top_k 5]
        [--model BASE --adapter ADAPTER] [--json FILE|-]

``index`` embeds every ``.jpg/.jpeg/.png/.tif/.tiff`` image under IMAGE_DIR (recursively) with the base
CLIP model (a folder or Hub id) and optional PEFT adapter (a folder or Hub id), and saves INDEX_DIR:
``embeddings-<id>.safetensors`` (``image_embeds``: ``(N, D)`` unit vectors, float32) and ``index.json`` (the
image folder, the files relative to it in row order, the model's identity and the embeddings file's name).
Run again on the same folder, it embeds only the images that are new and drops the ones that are gone.

Above 100,000 images (``--ann auto``), or whenever ``--ann flat|ivf|hnsw`` asks, a FAISS index over the
embeddings (:mod:`rsitr_hf.ann`) is made at the end of the run and saved as ``ann-<id>.faiss``, named in
``index.json``; queries then go through it. ``--ann exact`` never uses FAISS. A run that only adds images
extends the FAISS index (IVF keeps its trained lists); one that drops images, or whose size calls for
another index type (``auto`` crossing 100,000; IVF's list count doubling when the size quadruples),
rebuilds it.

Embedding can be spread over processes (GPUs or nodes) with ``accelerate launch -m rsitr_hf.search index
...``: batches are dealt out in turn, the main process gathers them in order and saves one index, equal to
a one-process build. The embeddings so far are saved every ``SAVE_EVERY_SECONDS`` (5 minutes), so an
interrupted run keeps its work (the FAISS index is made again by the next run).

Saves are atomic: a new embeddings file is written first, then ``index.json`` is replaced by a rename, and
only then is the old embeddings file deleted, so a kill at any point leaves the previous index or the new
one. One indexer at a time updates an index (a file lock, ``INDEX_DIR/.lock``; a second one waits). An index
lists only paths inside its image folder; a damaged or crafted ``index.json`` is refused with what to do.

The model identity is the base and adapter names plus a fingerprint: the embeddings of a fixed probe
image and caption. An index is only ever extended or queried with the model that built it: a different
base, adapter or weights (even under the same names) is refused with an error naming both.

``query`` ranks the indexed images for each ``--text`` (text -> image) or for an ``--image`` (image -> image),
or the captions of a caption file (one per line) for an ``--image`` with ``--captions`` (image -> text), and
prints a table; ``--json`` writes the results too.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .ann import ANN_KINDS, ANNConfig, ANNIndex
from .cli import HelpFormatter, command, command_parser, parse_arguments
from .data.images import to_rgb
from .distributed import Shards
from .errors import AdapterFileError, InputError, first_line
from .evaluation.encoding import image_embeddings, text_embeddings
from .files import write_json

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
PROBE_CAPTION = "an aerial image of a river next to green fields and a road"
FINGERPRINT_TOLERANCE = 1e-3  # identical weights on another device or library version stay within this
INDEX_FILE, EMBEDDINGS_FILE = "index.json", "embeddings.safetensors"  # the latter: format 1's fixed name
INDEX_FORMAT_VERSION = 2
LOCK_FILE = ".lock"
SAVE_EVERY_SECONDS = 300  # an interrupted run keeps its work; each save rewrites all embeddings


class SearchError(InputError, ValueError):
    """A search input is unusable (wrong model for an index, unreadable image, empty caption file ...)."""


@dataclass
class ModelIdentity:
    """Which model embedded an index: names, and the embeddings of a fixed probe image and caption."""

    base_model: str
    adapter: str | None
    fingerprint: list[float] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.base_model}" + (f" + adapter {self.adapter}" if self.adapter else " (no adapter)")

    def matches(self, other: ModelIdentity) -> bool:
        if (self.base_model, self.adapter) != (other.base_model, other.adapter):
            return False
        mine, theirs = np.asarray(self.fingerprint), np.asarray(other.fingerprint)
        return mine.shape == theirs.shape and bool(np.abs(mine - theirs).max() <= FINGERPRINT_TOLERANCE)


@dataclass
class Hit:
    """One result: ``rank`` (1 = best), cosine ``score``, and the image path or caption found."""

    rank: int
    score: float
    item: str


def model_name(name_or_path: str | os.PathLike) -> str:
    """A local folder as its absolute path; a Hub id as it is."""
    return str(Path(name_or_path).resolve()) if Path(name_or_path).exists() else str(name_or_path)


class RetrievalModel:
    """A CLIP base model with an optional PEFT adapter, embedding images and captions as unit vectors."""

    def __init__(
        self,
        base_model: str | os.PathLike,
        adapter: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
    ):
        from transformers import CLIPModel, CLIPProcessor

        import rsitr_hf  # noqa: F401  (registers the rsitr_hf tuners with peft)

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = CLIPModel.from_pretrained(base_model)
        except OSError as error:  # no such folder or Hub id, or not a model
            raise SearchError(f"--model {base_model}: {first_line(error)}") from None
        if adapter is not None:
            with warnings.catch_warnings():  # transformers' deprecation notice, triggered inside peft
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                model = load_adapter(model, adapter)
        self.model = model.to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(base_model)
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.identity = ModelIdentity(model_name(base_model), model_name(adapter) if adapter else None)
        self.identity.fingerprint = self.probe_fingerprint()

    def uses_pos_inputs(self) -> bool:
        config = getattr(self.model, "peft_config", {}).get("default")
        return getattr(config, "pos_mode", None) is not None

    @torch.no_grad()
    def embed_images(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        """``(N, D)`` unit-norm float32 embeddings of ``images``."""
        return image_embeddings(self.model, self.processor.image_processor, images).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """``(N, D)`` unit-norm float32 embeddings of ``texts``."""
        if self.uses_pos_inputs():
            raise SearchError(
                "this adapter is POSAPL's: its text tower needs POS-tagged captions, which rsitr-search "
                "does not produce; search with an adapter taking plain captions (MRS-Adapter, LoRA ...)"
            )
        inputs = self.processor.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return text_embeddings(self.model, inputs).cpu()

    def probe_fingerprint(self) -> list[float]:
        """Embeddings of a fixed colour-ramp image and of ``PROBE_CAPTION`` (image only for POSAPL)."""
        size = self.processor.image_processor.crop_size["height"]
        ramp = np.linspace(0, 255, size * size * 3).reshape(size, size, 3).astype(np.uint8)
        probes = [self.embed_images([PIL.Image.fromarray(ramp)])[0]]
        if not self.uses_pos_inputs():
            probes.append(self.embed_texts([PROBE_CAPTION])[0])
        return [round(value, 6) for value in torch.cat(probes).tolist()]


def load_adapter(model, adapter: str | os.PathLike):
    """``PeftModel.from_pretrained(model, adapter)``, with an :class:`AdapterFileError` naming the adapter
    when its config or weights cannot be read (not an adapter, another method, a damaged weights file)."""
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError, KeyError, SafetensorError, json.JSONDecodeError) as error:
        hint = " (a PEFT type rsitr_hf and peft do not know)" if isinstance(error, KeyError) else ""
        raise AdapterFileError(
            f"--adapter {adapter}: not a loadable adapter{hint}: {first_line(error)}"
        ) from None


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
    try:
        with PIL.Image.open(path) as image:
            rgb = to_rgb(image)
            rgb.load()  # the pixels, before the file closes
            return rgb
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise SearchError(f"{path}: not a readable image ({error})") from None


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
            embeddings = load_file(index_dir / embeddings_file)["image_embeds"]
        except Exception as error:  # safetensors' own error types, a missing file or key
            raise SearchError(
                f"{index_dir / embeddings_file} is damaged or missing ({error}): {rebuild}"
            ) from None
        if embeddings.ndim != 2 or embeddings.shape[0] != len(files):
            raise SearchError(
                f"{index_dir}: {embeddings_file} has {tuple(embeddings.shape)} embeddings for {len(files)} "
                f"files: {rebuild}"
            )
        return cls(
            root, files, embeddings, model, load_ann(index_dir, metadata.get("ann"), len(files), rebuild)
        )


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
    """What :func:`build_index` did: images embedded now, dropped (gone from the folder), the total, and what
    became of the FAISS index (``"none"``, ``"built <factory>"`` or ``"extended <factory>"``)."""

    added: list[str]
    removed: list[str]
    total: int
    ann: str = "none"


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


def embedded_rounds(
    names: list[str], root: str, model: RetrievalModel, batch_size: int, shards: Shards
) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """Embed the images ``root / name`` in batches of ``batch_size``, one batch per process per round.
    Yields, on every process, each round's ``(B, D)`` embeddings in order (each row computed from the same
    batch as in a one-process run) and how many images are done."""
    batches = [names[start : start + batch_size] for start in range(0, len(names), batch_size)]
    done = 0
    with tqdm(total=len(names), desc="embedding images", disable=not (names and shards.is_main)) as progress:
        for start in range(0, len(batches), shards.count):
            embedded, error = [], None
            try:
                for batch in shards.my_part(batches[start : start + shards.count]):
                    embedded.append(model.embed_images([read_image(Path(root) / name) for name in batch]))
            except InputError as failure:
                error = failure
            embedded = shards.gather(embedded, error)  # the other processes stop with its message
            if error is not None:
                raise error
            count = sum(len(piece) for piece in embedded)
            done += count
            progress.update(count)
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
    index.save(index_dir)
    return plan


def updated_ann(
    embeddings: np.ndarray, config: ANNConfig, previous: ANNIndex | None
) -> tuple[ANNIndex | None, str]:
    """The FAISS index for ``embeddings`` and what was done: ``previous`` (covering a prefix of the rows)
    extended with the new rows when it is still what ``config`` asks for at this size, else a new one."""
    if not config.uses_faiss(len(embeddings)) or len(embeddings) == 0:
        return None, "none"
    if previous is not None and previous.can_extend(config, len(embeddings)):
        previous.add(embeddings[len(previous) :])
        return previous, f"extended {previous.factory}"
    built = ANNIndex.build(embeddings, config)
    return built, f"built {built.factory}"


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


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    index_help, query_help = (
        "embed a folder of images (only the new ones)",
        "text -> images, image -> images, or image -> captions",
    )
    index_parser = commands.add_parser(
        "index", help=index_help, description=index_help, formatter_class=HelpFormatter
    )
    index_parser.add_argument("image_dir", help="the folder of images (searched recursively)")
    index_parser.add_argument("--index", required=True, help="the index folder to create or update")
    index_parser.add_argument("--model", required=True, help="base CLIP model (folder or Hub id)")
    index_parser.add_argument("--adapter", help="PEFT adapter (folder or Hub id)")
    index_parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    index_parser.add_argument(
        "--ann",
        default="auto",
        choices=ANN_KINDS,
        help="search backend: auto (exact below 100,000 images, else FAISS IVF), exact, or a FAISS index "
        "(flat, ivf, hnsw; needs faiss-cpu)",
    )
    query_parser = commands.add_parser(
        "query", help=query_help, description=query_help, formatter_class=HelpFormatter
    )
    query_parser.add_argument("--index", required=True, help="the index folder built by rsitr-search index")
    query_parser.add_argument("--text", action="append", help="a text query (repeatable)")
    query_parser.add_argument(
        "--image", help="an image query: the nearest indexed images (or, with --captions, captions)"
    )
    query_parser.add_argument(
        "--captions", help="caption file, one caption per line: --image ranks these instead"
    )
    query_parser.add_argument("--top_k", type=int, default=5, help="results per query")
    query_parser.add_argument("--model", help="checked against the index's model (default: that model)")
    query_parser.add_argument("--adapter", help="checked against the index's adapter")
    query_parser.add_argument("--json", help="also write the results as JSON to this file ('-': stdout only)")
    args = parse_arguments(parser, argv)
    if args.command == "index":
        shards = Shards.from_launcher()
        model = RetrievalModel(args.model, args.adapter, device=shards.device)
        update = build_index(
            args.image_dir, args.index, model, args.batch_size, ANNConfig(kind=args.ann), shards
        )
        if shards.is_main:
            print(
                f"{args.index}: {update.total} images ({len(update.added)} embedded now, "
                f"{len(update.removed)} gone; FAISS index: {update.ann})"
            )
        return 0
    return run_query(args)


def run_query(args) -> int:
    if bool(args.text) == bool(args.image) or (args.captions and not args.image):
        raise SearchError("give --text QUERY (repeatable), or --image PATH (with --captions FILE: captions)")
    index, model = open_index(args.index, args.model, args.adapter)
    if args.captions:
        key, queries, prefix, print_prefix = "caption", [str(args.image)], None, ""
        found = [search_captions(model, args.image, read_captions(args.captions), args.top_k)]
    else:  # the table shows paths relative to the indexed folder, the JSON full paths
        key, prefix, print_prefix = "path", Path(index.root), f" (images under {index.root})"
        if args.text:
            queries, found = args.text, search_images(index, model, args.text, args.top_k)
        else:
            queries = [str(args.image)]
            found = [similar_images(index, model, read_image(Path(args.image)), args.top_k)]
    if args.json != "-":
        for query, hits in zip(queries, found, strict=True):
            print(format_table(query + print_prefix, hits))
    if args.json:
        results = [
            {
                "query": query,
                "hits": [
                    {"rank": h.rank, "score": h.score, key: str(prefix / h.item) if prefix else h.item}
                    for h in hits
                ],
            }
            for query, hits in zip(queries, found, strict=True)
        ]
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
