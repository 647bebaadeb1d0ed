"""Approximate nearest-neighbour search over unit embeddings with FAISS.

Inner product on unit vectors is cosine similarity. The index type follows the number of vectors unless
given: an exact flat index below ``flat_below`` (100,000), IVF above it (``IVF<nlist>,Flat`` with ``nlist``
about ``sqrt(N)``, trained on a seeded sample, searched with ``nprobe`` lists), HNSW (``HNSW<m>,Flat``
searched with ``ef_search``), or IVF with product quantisation (``IVF<nlist>,PQ<m>``: ``m`` bytes a vector
in memory), whose candidates are re-ranked by their full-precision vectors (memory-mapped from disk by
the image index). Needs ``faiss-cpu`` (``pip install "rsitr_hf[search]"``).

A quantised IVF index (``ivfpq``) is stored as its trained, empty index (``ann-<name>.faiss``: the
centroids and codebooks) and its inverted lists in parts (``ann-<name>-<part>.faiss``, at most
``PART_ROWS`` rows each, written once): FAISS memory-maps each part (``IO_FLAG_MMAP``) and searches them
stacked (``HStackInvertedLists``, which copies each probed list's codes from its parts: cheap for 64-byte
codes), so a search holds the centroids and codebooks in memory, not the codes, and adding rows writes new
parts only. Other kinds (``IVF,Flat``, whose lists hold the full vectors, HNSW, flat) are one file, read
whole and written whole. Ids are the caller's (an index's
row ids); a search passes FAISS's search parameters: the setting, and an ID selector.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..utils.errors import InputError
from ..utils.optional import require

ANN_KINDS = ("auto", "exact", "flat", "ivf", "hnsw", "ivfpq")
TRAINING_POINTS_PER_LIST = 64  # k-means sample: enough for stable centroids, a few seconds at 1M vectors
MIN_NEW_FOR_CALIBRATION = 100  # held out: a tenth of the new vectors, at most calibration_queries
PQ_TRAINING_POINTS = 256 * 39  # FAISS's minimum for a codebook of 256 centroids, each sub-quantizer
ADD_BLOCK = 65_536  # vectors given to FAISS per call
EXACT_BLOCK = 32_768  # rows scored per step of exact search (Q x 32,768 scores in memory)
PART_ROWS = 1 << 20  # IVF: rows per file of inverted lists


def require_faiss():
    return require("faiss", "approximate search", "faiss-cpu", "search")


class Vectors(Protocol):
    """Unit vectors by id, as an index's store serves them (:class:`rsitr_hf.search.store.StoreVectors`)
    or an array does (:class:`ArrayVectors`): read a block or a few rows at a time, never whole."""

    dim: int

    def __len__(self) -> int: ...

    def ids(self) -> np.ndarray: ...

    def take(self, ids: np.ndarray) -> np.ndarray: ...

    def blocks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


class ArrayVectors:
    """The rows of an ``(N, D)`` array as vectors with ids ``ids`` (default ``0 .. N - 1``, increasing)."""

    def __init__(self, array: np.ndarray, ids: np.ndarray | None = None):
        self.array, self.dim = array, array.shape[1]
        self._ids = np.arange(len(array), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.array)

    def ids(self) -> np.ndarray:
        return self._ids

    def take(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[np.searchsorted(self._ids, ids)], dtype=np.float32)

    def blocks(self, size: int = EXACT_BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.array), size):
            yield (
                self._ids[start : start + size],
                np.asarray(self.array[start : start + size], dtype=np.float32),
            )


def as_vectors(vectors: Vectors | np.ndarray) -> Vectors:
    return ArrayVectors(vectors) if isinstance(vectors, np.ndarray) else vectors


@dataclass
class ANNConfig:
    """How an ANN index is built and searched.

    Args:
        kind: ``auto`` (exact search without FAISS below ``flat_below`` vectors, else IVF), ``exact`` (never
            FAISS: brute force, the reference), ``flat`` (FAISS's exact index), ``ivf`` or ``hnsw``.
        flat_below: with ``auto``, the size under which search stays exact.
        nlist: IVF lists (``None``: ``sqrt(N)`` rounded to a power of two, at most ``N // 39``).
        nprobe: IVF lists searched per query (``None``: the smallest number that reaches ``target_recall``,
            measured when the index is built or extended; a number is used as given, its recall measured).
        hnsw_m: HNSW neighbours per node.
        ef_search: HNSW candidate list length at search time (``None``: calibrated as ``nprobe``).
        target_recall: the recall@``recall_k`` against exact search that calibration aims for.
        recall_k: the ``k`` of that recall.
        calibration_queries: the most indexed vectors held out (seeded) as queries to measure the recall
            (a tenth of the vectors added, at most this).
        max_nprobe_fraction: calibration searches at most this share of the IVF lists (beyond it the index
            saves little over exact search, which the report then suggests).
        max_ef_search: the largest ``ef_search`` calibration tries.
        pq_bytes: ``ivfpq``: bytes of each vector's code (sub-quantizers of 8 bits; the largest divisor of
            the dimension at most this).
        rerank: ``ivfpq``: candidates re-ranked by their full-precision vectors, per result asked for
            (``None``: the smallest power of two, at most ``max_rerank``, that reaches ``target_recall`` at
            the calibrated ``nprobe``).
        max_rerank: the largest ``rerank`` calibration tries.
        seed: seed of the k-means training sample and of the calibration queries.
    """

    kind: str = "auto"
    flat_below: int = 100_000
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = 32
    ef_search: int | None = None
    target_recall: float = 0.95
    recall_k: int = 10
    calibration_queries: int = 1000
    max_nprobe_fraction: float = 0.5
    max_ef_search: int = 2048
    pq_bytes: int = 64
    rerank: int | None = None
    max_rerank: int = 512
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ANN_KINDS:
            raise InputError(f"ann kind: expected one of {list(ANN_KINDS)}, got {self.kind!r}")
        if not 0 < self.target_recall <= 1:
            raise InputError(f"target recall: expected a number in (0, 1], got {self.target_recall}")

    def uses_faiss(self, num_vectors: int) -> bool:
        """Whether ``num_vectors`` vectors get a FAISS index (``exact``, and ``auto`` below ``flat_below``,
        are searched by brute force)."""
        return self.kind != "exact" and not (self.kind == "auto" and num_vectors < self.flat_below)

    def factory(self, num_vectors: int, dim: int = 512) -> str:
        """The FAISS index factory string for ``num_vectors`` vectors of dimension ``dim``."""
        kind = self.kind
        if kind == "auto":
            kind = "flat" if num_vectors < self.flat_below else "ivf"
        if kind in ("flat", "exact"):
            return "Flat"
        if kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if kind == "ivfpq":
            sub_quantizers = max(d for d in range(1, min(self.pq_bytes, dim) + 1) if dim % d == 0)
            return f"IVF{self.lists_for(num_vectors)},PQ{sub_quantizers}"
        return f"IVF{self.lists_for(num_vectors)},Flat"

    def lists_for(self, num_vectors: int) -> int:
        if self.nlist is not None:
            return self.nlist
        suggested = 2 ** round(math.log2(max(1.0, math.sqrt(num_vectors))))
        return max(1, min(suggested, num_vectors // 39))  # FAISS wants >= 39 training points per list


@dataclass
class Calibration:
    """What an index measured of itself: its recall@``k`` against exact search for ``queries`` of the
    vectors it indexes, drawn (seeded) and held out of it while it was measured, so that they are queries
    it has not seen, at each ``parameter`` value tried (``tried``: value -> recall, increasing), and the
    value it searches with (``value``, recall ``recall``). ``reached``: whether that recall reaches
    ``target``; ``fixed``: the value was given, not chosen; ``text_queries``: real text queries measured
    beside the held-out vectors (``rsitr-search index --calibration_texts``)."""

    parameter: str
    value: int
    recall: float
    k: int
    target: float
    reached: bool
    queries: int
    fixed: bool
    tried: dict[int, float]
    rerank: int | None = None  # ivfpq: candidates re-ranked per result
    text_queries: int = 0

    def describe(self) -> str:
        """One line for a person: the recall, the setting, and what to do when the target is not met."""
        setting = f"{self.parameter} {self.value}" + (" (as given)" if self.fixed else "")
        setting += f", {self.rerank} candidates re-ranked a result" if self.rerank else ""
        line = (
            f"recall@{self.k} {self.recall:.3f} at {setting}, measured with {self.queries:,} held-out vectors"
            + (f" and {self.text_queries:,} text queries" if self.text_queries else "")
        )
        if self.reached:
            return f"{line} (target {self.target:g})"
        return (
            f"{line}: BELOW the target {self.target:g}"
            + ("" if self.fixed else f" (the most {self.parameter} calibration tries)")
            + "; more lists or candidates would cost nearly as much as exact search: use --ann exact, or "
            "accept the recall"
        )


@dataclass
class ListsPart:
    """Some rows' share of an IVF index's inverted lists: ``owner`` holds them (an IVF index while they are
    in memory, the memory-mapped lists once read from ``file``)."""

    owner: object
    file: str | None = None
    rows: int | None = None  # counted once the lists are on disk

    @property
    def lists(self):
        faiss = require_faiss()
        return self.owner if self.file is not None else faiss.extract_index_ivf(self.owner).invlists

    def __len__(self) -> int:
        if self.file is None:
            return self.owner.ntotal
        if self.rows is None:
            self.rows = int(sum(self.lists.list_size(number) for number in range(self.lists.nlist)))
        return self.rows


class ANNIndex:
    """A FAISS index over unit vectors, which it knows by id. IVF and HNSW indexes carry the
    :class:`Calibration` that chose (or measured) their search setting. ``folder``: where an IVF index
    writes its parts as they fill (``None``: they stay in memory until :meth:`save`)."""

    def __init__(
        self,
        faiss_index,
        config: ANNConfig,
        factory: str,
        calibration: Calibration | None = None,
        trained=None,
        parts: list[ListsPart] | None = None,
        name: str | None = None,
        folder: Path | None = None,
    ):
        self.faiss = faiss_index  # what searches: for IVF, the trained index over the parts' lists stacked
        self.trained, self.parts = trained, parts or []  # IVF: the trained, empty index; its lists in parts
        self.name, self.folder = name or uuid.uuid4().hex[:12], folder
        self.config = config
        self.factory = factory
        self.calibration = calibration
        self.vectors: Vectors | None = None  # full precision by id: re-ranks a quantised index
        self.excluded: np.ndarray | None = None  # ids never returned (rows deleted since they were added)
        self.rerank = (calibration.rerank if calibration else None) or config.rerank or config.max_rerank
        self.set_search_value(self.search_value())
        if self.trained is not None:
            self.stack_parts()

    @classmethod
    def build(
        cls,
        vectors: Vectors | np.ndarray,
        config: ANNConfig | None = None,
        queries: np.ndarray | None = None,
        folder: Path | None = None,
    ) -> ANNIndex:
        """A FAISS index of ``vectors`` (unit vectors by id: a store's, or an array's rows as ids ``0 ..
        N - 1``), read block by block; an IVF or HNSW one is calibrated on a held-out sample of them
        (:meth:`calibrate`) before the sample goes in."""
        faiss = require_faiss()
        config = config or ANNConfig()
        vectors = as_vectors(vectors)
        factory = config.factory(len(vectors), vectors.dim)
        if ",PQ" in factory and len(vectors) < 256:
            raise InputError(
                f"ann kind ivfpq: needs at least 256 vectors to train its codebooks, got {len(vectors)}"
            )
        # the ids are row ids: IVF stores those it is given, the others are wrapped in an id map
        structure = factory if factory.startswith("IVF") else f"IDMap2,{factory}"
        index = faiss.index_factory(vectors.dim, structure, faiss.METRIC_INNER_PRODUCT)
        if ",PQ" in factory:  # polysemous codes serve a Hamming pre-filter, which search does not use
            faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        if not index.is_trained:  # IVF: k-means on a seeded sample
            wanted = TRAINING_POINTS_PER_LIST * config.lists_for(len(vectors))
            wanted = max(wanted, PQ_TRAINING_POINTS) if ",PQ" in factory else wanted
            ids = vectors.ids()
            sample = np.sort(np.random.default_rng(config.seed).permutation(len(ids))[:wanted])
            index.train(vectors.take(ids[sample]))
        if factory.startswith("IVF") and ",PQ" in factory:  # lists in parts, on disk
            built = cls(faiss.clone_index(index), config, factory, trained=index, folder=folder)
        else:
            built = cls(index, config, factory, folder=folder)
        built.add(vectors, store=vectors, queries=queries)
        return built

    def can_extend(self, config: ANNConfig, num_vectors: int) -> bool:
        """Whether this index, grown to ``num_vectors`` by :meth:`add`, is what ``config`` would build: same
        settings, same index type at the new size (IVF's list count doubles when ``N`` quadruples)."""
        same_type = config.factory(num_vectors, self.faiss.d) == self.factory
        return config == self.config and same_type

    def add(
        self,
        new: Vectors | np.ndarray,
        store: Vectors | np.ndarray | None = None,
        queries: np.ndarray | None = None,
    ) -> None:
        """Add the vectors ``new`` under their ids (an array: ids ``len(self)`` on), a block at a time (a
        memory-mapped store is read as it goes, never copied whole). Given ``store`` (every vector indexed
        once these are in), an IVF or HNSW index holds a seeded sample of the new vectors out, calibrates on
        it and on ``queries`` (real text queries' embeddings, when given; :meth:`calibrate`), then adds it;
        with fewer than ``MIN_NEW_FOR_CALIBRATION`` new vectors its measured setting stands."""
        if isinstance(new, np.ndarray):
            new = ArrayVectors(new, np.arange(len(self), len(self) + len(new), dtype=np.int64))
        store = None if store is None else as_vectors(store)
        held_out = np.empty(0, dtype=np.int64)
        if store is not None and self.parameter is not None and len(new) >= MIN_NEW_FOR_CALIBRATION:
            count = min(self.config.calibration_queries, len(new) // 10)
            rng = np.random.default_rng(self.config.seed)
            held_out = np.sort(new.ids()[rng.choice(len(new), count, replace=False)])
        target = self.faiss if self.trained is None else None  # IVF: new parts of lists
        for ids, block in new.blocks(ADD_BLOCK):
            keep = ~np.isin(ids, held_out)
            ids, block, start = ids[keep], block[keep], 0
            while start < len(ids):  # IVF: a part takes at most PART_ROWS rows
                if self.trained is not None and (target is None or target.ntotal >= PART_ROWS):
                    target = self.new_part()
                room = len(ids) - start if self.trained is None else PART_ROWS - target.ntotal
                target.add_with_ids(
                    np.ascontiguousarray(block[start : start + room]), ids[start : start + room]
                )
                start += room
        if self.trained is not None:
            self.stack_parts()
        if store is not None:
            self.vectors = store
        if len(held_out):
            held_out_vectors = store.take(held_out)
            self.calibrate(held_out_vectors, store, held_out, queries)
            (target if target is not None else self.new_part()).add_with_ids(held_out_vectors, held_out)
        if self.trained is not None:
            self.stack_parts()
            if self.folder is not None:  # the full parts are on disk; this keeps the last one's memory
                self.write_parts(self.folder)

    def new_part(self):
        """An empty IVF index for more rows' lists (the part before it, full, goes to disk when it can)."""
        if self.folder is not None:
            self.write_parts(self.folder)
        part = require_faiss().clone_index(self.trained)
        self.parts.append(ListsPart(part))
        return part

    def stack_parts(self) -> None:
        """Search the parts' inverted lists as one (FAISS's ``HStackInvertedLists``; no part: no lists)."""
        faiss = require_faiss()
        ivf = faiss.extract_index_ivf(self.faiss)
        if self.parts:
            pointers = faiss.InvertedListsPtrVector()
            for part in self.parts:
                pointers.push_back(part.lists)
            stacked = faiss.HStackInvertedLists(pointers.size(), pointers.data())
            ivf.replace_invlists(stacked, False)
            self.stacked = (pointers, stacked)  # FAISS does not own them: kept alive with the index
        ivf.ntotal = self.faiss.ntotal = sum(len(part) for part in self.parts)

    def write_parts(self, folder: Path) -> None:
        """Write the parts still in memory to ``folder`` and map them back from there."""
        faiss = require_faiss()
        for part in self.parts:
            if part.file is None:
                file = f"ann-{self.name}-{uuid.uuid4().hex[:8]}.faiss"
                writer = faiss.FileIOWriter(str(folder / file))
                faiss.write_InvertedLists(part.lists, writer)
                del writer  # closes the file
                part.owner, part.file = read_lists(folder / file), file
        self.stack_parts()

    def remove(self, ids: np.ndarray) -> bool:
        """Remove ``ids`` from the index; ``False`` when this index type cannot (HNSW, and ``ivfpq``, whose
        lists are written once: build it again)."""
        if self.factory.startswith("HNSW") or self.trained is not None:
            return False
        faiss = require_faiss()
        self.faiss.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
        return True

    def summary(self) -> str:
        """The index type and what it measured of its recall, for a header (``FAISS `IVF1024,Flat`, recall@10
        0.962 at nprobe 64``)."""
        measured = self.calibration
        if self.parameter is None:
            return f"FAISS `{self.factory}` (exact)"
        if measured is None:  # saved before rsitr_hf measured recall, or built of too few vectors
            added = f"{MIN_NEW_FOR_CALIBRATION}+ vectors are added at once"
            return f"FAISS `{self.factory}`, recall not measured (an index measures it when {added})"
        setting = f"{measured.parameter} {measured.value}"
        below = "" if measured.reached else f", below the target {measured.target:g}"
        return f"FAISS `{self.factory}`, recall@{measured.k} {measured.recall:.3f} at {setting}{below}"

    @property
    def parameter(self) -> str | None:
        """The search setting of this index type: ``nprobe`` (IVF), ``efSearch`` (HNSW), ``None`` (exact)."""
        if self.factory.startswith("IVF"):
            return "nprobe"
        return "efSearch" if self.factory.startswith("HNSW") else None

    def search_value(self) -> int | None:
        """The setting searches use: the calibrated one, else the config's, else rsitr_hf 0.1's fixed values
        (``nprobe`` 16, ``efSearch`` 128) until the index is calibrated."""
        if self.calibration is not None:
            return self.calibration.value
        if self.parameter == "nprobe":
            return self.config.nprobe or 16
        return (self.config.ef_search or 128) if self.parameter == "efSearch" else None

    def set_search_value(self, value: int | None) -> None:
        self.value = value  # given to FAISS with each search (search_parameters)

    def candidate_values(self) -> list[int]:
        """The settings calibration tries, increasing: the config's fixed value alone, or powers of two up to
        ``max_nprobe_fraction`` of the lists (IVF) or ``max_ef_search`` (HNSW, from ``recall_k``)."""
        config = self.config
        if self.parameter == "nprobe":
            if config.nprobe is not None:
                return [config.nprobe]
            lists = require_faiss().extract_index_ivf(self.faiss).nlist
            most = max(1, int(lists * config.max_nprobe_fraction))
            return [*powers_of_two(1, most), *([most] if most & (most - 1) else [])]
        if config.ef_search is not None:
            return [config.ef_search]
        return powers_of_two(max(16, config.recall_k), config.max_ef_search)

    def calibrate(
        self,
        queries: np.ndarray,
        embeddings: Vectors,
        held_out: np.ndarray,
        text_queries: np.ndarray | None = None,
    ) -> Calibration:
        """Measure the recall@k of this index against exact search for ``queries``, the vectors of ids
        ``held_out`` of ``embeddings``, over the other vectors, which the index holds now, and search with
        the smallest setting that reaches the target (:func:`smallest_reaching`; the largest tried when none
        does; the config's when it fixes one). A quantised index chooses its ``nprobe`` by the share of true
        neighbours in the lists it probes (:meth:`coarse_recall`, which bounds what re-ranking can find;
        aiming halfway between the target and 1), then the fewest candidates a result (powers of two up to
        ``max_rerank``) whose re-ranking reaches the target there (or comes within half the target's
        distance from 1 of that share, when the share is lower); ``tried`` then holds that share.
        ``text_queries`` (``(T, D)``), when given, are measured beside ``queries``, over the same rows, and
        the recall that counts is the lower of the two groups' (the setting must serve both)."""
        config = self.config
        k = min(config.recall_k, len(embeddings) - len(held_out))
        held_out_queries = len(queries)
        if text_queries is not None and len(text_queries):
            queries = np.concatenate([queries, np.asarray(text_queries, dtype=np.float32)])
        truth = exact_neighbours(queries, embeddings, k, held_out)
        groups = [slice(0, held_out_queries), slice(held_out_queries, len(queries))]

        def recall(shares: np.ndarray) -> float:  # the lower of the two groups' mean (an empty one: none)
            return min(float(np.mean(shares[group])) for group in groups if group.stop > group.start)

        tried, rerank_tried = {}, {}
        if self.quantised:
            self.rerank = config.rerank or config.max_rerank
            true_lists = self.lists_of(embeddings, truth)

        def measure(value: int) -> bool:
            self.set_search_value(value)
            if self.quantised:
                tried[value] = recall(self.coarse_recall(queries, true_lists, value))
                return tried[value] >= 1 - (1 - config.target_recall) / 2
            tried[value] = recall(recall_shares(self.search(queries, k)[1], truth, k))
            return tried[value] >= config.target_recall

        def measure_rerank(candidates: int) -> bool:  # the target, or near the lists' bound when lower
            self.rerank = candidates
            rerank_tried[candidates] = recall(recall_shares(self.search(queries, k)[1], truth, k))
            margin = (1 - config.target_recall) / 2
            return rerank_tried[candidates] >= min(config.target_recall, tried[value] - margin)

        value = smallest_reaching(self.candidate_values(), measure) or max(tried)
        measured = tried[value]
        if self.quantised:  # then as few candidates as reach the target there
            self.set_search_value(value)
            choices = [config.rerank] if config.rerank is not None else powers_of_two(1, config.max_rerank)
            self.rerank = smallest_reaching(choices, measure_rerank) or max(rerank_tried)
            measured = rerank_tried[self.rerank]
        tried = dict(sorted(tried.items()))
        fixed = (config.nprobe if self.parameter == "nprobe" else config.ef_search) is not None
        self.calibration = Calibration(
            self.parameter, value, measured, k, config.target_recall, measured >= config.target_recall,
            held_out_queries, fixed, tried, self.rerank if self.quantised else None,
            len(queries) - held_out_queries,
        )  # fmt: skip
        self.set_search_value(value)
        return self.calibration

    @property
    def coarse_quantizer(self):
        """The IVF index's quantizer: the lists' centroids."""
        return require_faiss().extract_index_ivf(self.faiss).quantizer

    def lists_of(self, embeddings: Vectors, truth: np.ndarray) -> np.ndarray:
        """``(Q, k)``: the IVF list of each true neighbour (an id of ``embeddings``) in ``truth``; each
        distinct vector is read once."""
        ids = np.unique(truth)
        return self.coarse_quantizer.assign(embeddings.take(ids), 1).ravel()[np.searchsorted(ids, truth)]

    def coarse_recall(self, queries: np.ndarray, true_lists: np.ndarray, nprobe: int) -> np.ndarray:
        """``(Q,)``: the share of each query's true neighbours (their lists: ``true_lists``) that lie in the
        ``nprobe`` lists the query probes: the most a search of those lists can find."""
        probed = self.coarse_quantizer.search(np.ascontiguousarray(queries, dtype=np.float32), nprobe)[1]
        return np.array([np.isin(lists, seen).mean() for lists, seen in zip(true_lists, probed, strict=True)])

    def __len__(self) -> int:
        return self.faiss.ntotal

    @property
    def quantised(self) -> bool:
        return ",PQ" in self.factory

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(Q, k)``, best first (ids of -1 where fewer than ``k`` were found), never
        an id of ``excluded`` and, given ``allowed``, only those ids (FAISS tests each id against an ID
        selector while it searches). A quantised index re-ranks ``self.rerank * k`` candidates by their
        full-precision ``vectors`` (the scores are then exact inner products), when it has them."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        wanted = min(k * self.rerank if self.quantised and self.vectors is not None else k, len(self))
        parameters = self.search_parameters(allowed)
        scores, ids = self.faiss.search(queries, max(wanted, 1), params=parameters)
        if wanted == k or not self.quantised:
            return scores[:, :k], ids[:, :k]
        return reranked(queries, ids, self.vectors, k)

    def search_parameters(self, allowed: np.ndarray | None = None):
        """FAISS's search parameters: the calibrated setting, and a selector keeping only ``allowed`` (which
        holds no excluded id) or leaving ``excluded`` out."""
        faiss = require_faiss()
        selector = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        elif self.excluded is not None and len(self.excluded):
            batch = faiss.IDSelectorBatch(np.ascontiguousarray(self.excluded, dtype=np.int64))
            selector = faiss.IDSelectorNot(batch)
            selector.referenced = batch  # FAISS does not own it: keep it alive as long as the selector
        if self.parameter == "nprobe":
            parameters = faiss.SearchParametersIVF(nprobe=self.value)
        elif self.parameter == "efSearch":
            parameters = faiss.SearchParametersHNSW(efSearch=self.value)
        else:
            parameters = faiss.SearchParameters()
        if selector is not None:
            parameters.sel = selector
            parameters.referenced = selector
        return parameters

    def save(self, folder: str | os.PathLike) -> dict:
        """Write what is not yet written to ``folder``: an IVF index's trained index (once) and its new
        parts, any other index whole (under a new name). Returns its settings (config, factory, calibration
        and ``files``, the first being the index), to be stored beside it."""
        faiss, folder = require_faiss(), Path(folder)
        if self.trained is not None:
            first = f"ann-{self.name}.faiss"
            if not (folder / first).is_file():
                faiss.write_index(self.trained, str(folder / first))
            for part in self.parts:
                if part.file is not None and self.folder != folder:  # parts written elsewhere: copied
                    shutil.copyfile(self.folder / part.file, folder / part.file)
            self.write_parts(folder)
            self.folder = folder
            files = [first, *(part.file for part in self.parts)]
        else:
            self.name = uuid.uuid4().hex[:12]
            files = [f"ann-{self.name}.faiss"]
            faiss.write_index(self.faiss, str(folder / files[0]))
        calibration = asdict(self.calibration) if self.calibration is not None else None
        return {**asdict(self.config), "factory": self.factory, "calibration": calibration, "files": files}

    @classmethod
    def load(cls, folder: str | os.PathLike, settings: dict) -> ANNIndex:
        """The index ``settings`` (what :meth:`save` returned) describe, from ``folder``: an IVF index's parts
        memory-mapped."""
        faiss, folder = require_faiss(), Path(folder)
        settings = dict(settings)
        factory, files = settings.pop("factory"), settings.pop("files")
        calibration = settings.pop("calibration", None)
        if calibration is not None:
            calibration = Calibration(
                **{**calibration, "tried": {int(v): r for v, r in calibration["tried"].items()}}
            )
        config, name = ANNConfig(**settings), files[0][len("ann-") : -len(".faiss")]
        first = faiss.read_index(str(folder / files[0]))
        if len(files) == 1 and not (factory.startswith("IVF") and ",PQ" in factory):
            return cls(first, config, factory, calibration, name=name, folder=folder)
        parts = [ListsPart(read_lists(folder / file), file) for file in files[1:]]
        return cls(faiss.clone_index(first), config, factory, calibration, first, parts, name, folder)


def read_lists(path: Path):
    """Inverted lists written by :meth:`ANNIndex.write_parts`, memory-mapped (the codes stay on disk)."""
    faiss = require_faiss()
    return faiss.read_InvertedLists(faiss.FileIOReader(str(path)), faiss.IO_FLAG_MMAP)


def smallest_reaching(values: list[int], reaches) -> int | None:
    """The smallest setting for which ``reaches(value)`` (measuring it) is true: ``values`` (increasing) in
    turn until one reaches, then halving the gap to the last that did not, down to an eighth of it;
    ``None`` when none does."""
    tried_below = []
    for value in values:
        if reaches(value):
            low = tried_below[-1] if tried_below else value
            while value - low > max(1, low // 8):
                middle = (low + value) // 2
                low, value = (low, middle) if reaches(middle) else (middle, value)
            return value
        tried_below.append(value)
    return None


def powers_of_two(low: int, high: int) -> list[int]:
    """The powers of two from the first at or above ``low`` up to ``high``."""
    value = 1 << max(0, math.ceil(math.log2(max(1, low))))
    values = []
    while value <= high:
        values.append(value)
        value *= 2
    return values or [high]


def exact_top_k(
    queries: np.ndarray, blocks: Iterator[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)``, each ``(Q, k)``, best first (ids of -1 where fewer than ``k`` exist): the ``k``
    highest inner products of each query with the vectors of ``blocks`` (``(ids, (n, D))``), read once,
    keeping each query's best ``k`` so far: a memory-mapped store larger than memory is read once."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for ids, block in blocks:
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)
        candidates = np.concatenate([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(candidates, top, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    scores, ids = np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_ids, order, 1)
    ids[np.isneginf(scores)] = -1
    return scores, ids


def exact_neighbours(
    queries: np.ndarray, vectors: Vectors | np.ndarray, k: int = 10, excluded: np.ndarray | None = None
) -> np.ndarray:
    """``(Q, k)``: the ids of the vectors (all but those ``excluded``) with the ``k`` highest inner
    products with each query (:func:`exact_top_k`)."""
    excluded = np.asarray([] if excluded is None else excluded, dtype=np.int64)

    def kept_blocks():
        for ids, block in as_vectors(vectors).blocks(EXACT_BLOCK):
            keep = ~np.isin(ids, excluded)
            yield ids[keep], block[keep]

    return exact_top_k(queries, kept_blocks(), k)[1]


def reranked(queries: np.ndarray, candidates: np.ndarray, vectors: Vectors, k: int):
    """``(scores, ids)`` of the ``k`` of each query's ``candidates`` (``-1``: none) with the highest inner
    products with its full-precision vector (read vector by vector: a memory map stays on disk)."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for i, (query, found) in enumerate(zip(queries, candidates, strict=True)):
        found = np.unique(found[found >= 0])  # sorted: the reads run forward through the file
        exact = vectors.take(found) @ query
        best = np.argsort(-exact, kind="stable")[:k]
        scores[i, : len(best)], rows[i, : len(best)] = exact[best], found[best]
    return scores, rows


def recall_shares(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """``(Q,)``: the share of each query's true ``k`` nearest rows (``truth``) that ``found`` holds."""
    return np.array([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth, strict=True)])


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """The mean share of each query's true ``k`` nearest rows (``truth``) that ``found`` holds."""
    return float(np.mean(recall_shares(found, truth, k)))
