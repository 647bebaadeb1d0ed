"""Approximate nearest-neighbour search over unit embeddings with FAISS, through ``datasets``' FAISS
integration (:class:`datasets.search.FaissIndex`: building, batched search, saving and loading).

Inner product on unit vectors is cosine similarity. The index type follows the number of vectors unless
given: an exact flat index below ``flat_below`` (100,000), IVF above it (``IVF<nlist>,Flat`` with ``nlist``
about ``sqrt(N)``, trained on a seeded sample, searched with ``nprobe`` lists), HNSW (``HNSW<m>,Flat``
searched with ``ef_search``), or IVF with product quantisation (``IVF<nlist>,PQ<m>``: ``m`` bytes a vector
in memory), whose candidates are re-ranked by their full-precision vectors (memory-mapped from disk by
the image index). Needs ``faiss-cpu`` (``pip install "rsitr_hf[search]"``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..utils.errors import InputError
from ..utils.optional import require

ANN_KINDS = ("auto", "exact", "flat", "ivf", "hnsw", "ivfpq")
TRAINING_POINTS_PER_LIST = 64  # k-means sample: enough for stable centroids, a few seconds at 1M vectors
MIN_NEW_FOR_CALIBRATION = 100  # held out: a tenth of the new vectors, at most calibration_queries
PQ_TRAINING_POINTS = 256 * 39  # FAISS's minimum for a codebook of 256 centroids, each sub-quantizer
ADD_BLOCK = 65_536  # vectors given to FAISS per call
EXACT_BLOCK = 32_768  # rows scored per step of exact search (Q x 32,768 scores in memory)


def require_faiss():
    return require("faiss", "approximate search", "faiss-cpu", "search")


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


class ANNIndex:
    """A FAISS index over ``(N, D)`` float32 unit vectors; row ``i`` of the embeddings is id ``i``. IVF and
    HNSW indexes carry the :class:`Calibration` that chose (or measured) their search setting."""

    def __init__(self, faiss_index, config: ANNConfig, factory: str, calibration: Calibration | None = None):
        self.index = faiss_index  # a datasets.search.FaissIndex
        self.config = config
        self.factory = factory
        self.calibration = calibration
        self.vectors: np.ndarray | None = None  # full precision, row i = id i: re-ranks a quantised index
        self.rerank = (calibration.rerank if calibration else None) or config.rerank or config.max_rerank
        self.set_search_value(self.search_value())

    @classmethod
    def build(
        cls, embeddings: np.ndarray, config: ANNConfig | None = None, queries: np.ndarray | None = None
    ) -> ANNIndex:
        """A FAISS index of ``embeddings`` (``(N, D)`` unit vectors, row ``i`` = id ``i``); an IVF or HNSW one
        is calibrated on a held-out sample of them (:meth:`calibrate`) before the sample goes in."""
        faiss = require_faiss()
        from datasets.search import FaissIndex

        config = config or ANNConfig()
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        factory = config.factory(len(vectors), vectors.shape[1])
        if ",PQ" in factory and len(vectors) < 256:
            raise InputError(
                f"ann kind ivfpq: needs at least 256 vectors to train its codebooks, got {len(vectors)}"
            )
        # HNSW numbers its vectors in the order they come; an id map keeps row i as id i when the held-out
        # calibration sample goes in last (IVF stores the ids it is given)
        structure = f"IDMap2,{factory}" if factory.startswith("HNSW") else factory
        index = faiss.index_factory(vectors.shape[1], structure, faiss.METRIC_INNER_PRODUCT)
        if ",PQ" in factory:  # polysemous codes serve a Hamming pre-filter, which search does not use
            faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        if not index.is_trained:  # IVF: k-means on a seeded sample (datasets would take the first rows)
            wanted = TRAINING_POINTS_PER_LIST * config.lists_for(len(vectors))
            wanted = max(wanted, PQ_TRAINING_POINTS) if ",PQ" in factory else wanted
            rows = np.random.default_rng(config.seed).permutation(len(vectors))[:wanted]
            index.train(vectors[np.sort(rows)])
        built = cls(FaissIndex(custom_index=index), config, factory)
        built.add(vectors, all_embeddings=vectors, queries=queries)
        return built

    def can_extend(self, config: ANNConfig, num_vectors: int) -> bool:
        """Whether this index, grown to ``num_vectors`` by :meth:`add`, is what ``config`` would build: same
        settings, same index type at the new size (IVF's list count doubles when ``N`` quadruples)."""
        same_type = config.factory(num_vectors, self.index.faiss_index.d) == self.factory
        return config == self.config and same_type

    def add(
        self,
        embeddings: np.ndarray,
        all_embeddings: np.ndarray | None = None,
        queries: np.ndarray | None = None,
    ) -> None:
        """Append ``(M, D)`` vectors as ids ``len(self)`` to ``len(self) + M - 1`` (IVF keeps its lists).
        Given ``all_embeddings`` (every vector indexed once these are in), an IVF or HNSW index holds a seeded
        sample of the new vectors out, calibrates on it and on ``queries`` (real text queries' embeddings,
        when given; :meth:`calibrate`), then adds it; with fewer than ``MIN_NEW_FOR_CALIBRATION`` new vectors
        its measured setting stands."""
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        first = len(self)
        if self.parameter is None:  # exact: FAISS numbers the rows itself
            self.index.add_vectors(vectors, batch_size=ADD_BLOCK)
            return
        ids = np.arange(first, first + len(vectors), dtype=np.int64)
        held_out = np.zeros(len(vectors), dtype=bool)
        if all_embeddings is not None and len(vectors) >= MIN_NEW_FOR_CALIBRATION:
            count = min(self.config.calibration_queries, len(vectors) // 10)
            rng = np.random.default_rng(self.config.seed)
            held_out[rng.choice(len(vectors), count, replace=False)] = True
        self.add_with_ids(vectors, ids, ~held_out)
        if all_embeddings is not None:
            self.vectors = all_embeddings
        if held_out.any():
            self.calibrate(vectors[held_out], np.asarray(all_embeddings), ids[held_out], queries)
        self.add_with_ids(vectors[held_out], ids[held_out])

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray, chosen: np.ndarray | None = None) -> None:
        """Add the rows of ``vectors`` (those ``chosen``, by default all) as ``ids``, a block at a time: a
        memory-mapped array is read as it goes, never copied whole."""
        for start in range(0, len(vectors), ADD_BLOCK):
            block, block_ids = vectors[start : start + ADD_BLOCK], ids[start : start + ADD_BLOCK]
            if chosen is not None:
                keep = chosen[start : start + ADD_BLOCK]
                block, block_ids = block[keep], block_ids[keep]
            self.index.faiss_index.add_with_ids(np.ascontiguousarray(block, dtype=np.float32), block_ids)

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
        if self.parameter is not None:
            faiss = require_faiss()
            faiss.ParameterSpace().set_index_parameter(self.index.faiss_index, self.parameter, value)

    def candidate_values(self) -> list[int]:
        """The settings calibration tries, increasing: the config's fixed value alone, or powers of two up to
        ``max_nprobe_fraction`` of the lists (IVF) or ``max_ef_search`` (HNSW, from ``recall_k``)."""
        config = self.config
        if self.parameter == "nprobe":
            if config.nprobe is not None:
                return [config.nprobe]
            lists = require_faiss().extract_index_ivf(self.index.faiss_index).nlist
            most = max(1, int(lists * config.max_nprobe_fraction))
            return [*powers_of_two(1, most), *([most] if most & (most - 1) else [])]
        if config.ef_search is not None:
            return [config.ef_search]
        return powers_of_two(max(16, config.recall_k), config.max_ef_search)

    def calibrate(
        self,
        queries: np.ndarray,
        embeddings: np.ndarray,
        held_out: np.ndarray,
        text_queries: np.ndarray | None = None,
    ) -> Calibration:
        """Measure the recall@k of this index against exact search for ``queries``, the rows ``held_out`` of
        ``embeddings`` (row ``i`` = id ``i``), over the other rows, which the index holds now, and search with
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
        truth = exact_neighbours(queries, embeddings, held_out, k)
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
        return require_faiss().extract_index_ivf(self.index.faiss_index).quantizer

    def lists_of(self, embeddings: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """``(Q, k)``: the IVF list of each true neighbour (a row of ``embeddings``) in ``truth``; each
        distinct row is read once."""
        rows = np.unique(truth)
        vectors = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
        return self.coarse_quantizer.assign(vectors, 1).ravel()[np.searchsorted(rows, truth)]

    def coarse_recall(self, queries: np.ndarray, true_lists: np.ndarray, nprobe: int) -> np.ndarray:
        """``(Q,)``: the share of each query's true neighbours (their lists: ``true_lists``) that lie in the
        ``nprobe`` lists the query probes: the most a search of those lists can find."""
        probed = self.coarse_quantizer.search(np.ascontiguousarray(queries, dtype=np.float32), nprobe)[1]
        return np.array([np.isin(lists, seen).mean() for lists, seen in zip(true_lists, probed, strict=True)])

    def __len__(self) -> int:
        return self.index.faiss_index.ntotal

    @property
    def quantised(self) -> bool:
        return ",PQ" in self.factory

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, each ``(Q, k)``, best first (rows of -1 where fewer than ``k`` were found). A
        quantised index re-ranks ``self.rerank * k`` candidates by their full-precision ``vectors`` (the
        scores are then exact inner products), when it has them."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        wanted = min(k * self.rerank if self.quantised and self.vectors is not None else k, len(self))
        result = self.index.search_batch(queries, k=wanted)
        scores, rows = np.asarray(result.total_scores), np.asarray(result.total_indices)
        if wanted == k or not self.quantised:
            return scores, rows
        return reranked(queries, rows, self.vectors, k)

    def save(self, path: str | os.PathLike) -> dict:
        """Write the index to ``path``; returns its settings (config, factory and calibration), to be stored
        beside it."""
        self.index.save(path)
        calibration = asdict(self.calibration) if self.calibration is not None else None
        return {**asdict(self.config), "factory": self.factory, "calibration": calibration}

    @classmethod
    def load(cls, path: str | os.PathLike, settings: dict) -> ANNIndex:
        require_faiss()
        from datasets.search import FaissIndex

        settings = dict(settings)
        factory = settings.pop("factory")
        calibration = settings.pop("calibration", None)  # absent from indexes of rsitr_hf 0.1
        if calibration is not None:
            calibration = Calibration(
                **{**calibration, "tried": {int(v): r for v, r in calibration["tried"].items()}}
            )
        return cls(FaissIndex.load(path), ANNConfig(**settings), factory, calibration)


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


def exact_neighbours(
    queries: np.ndarray, embeddings: np.ndarray, excluded: np.ndarray | None = None, k: int = 10
) -> np.ndarray:
    """``(Q, k)``: the rows of ``embeddings`` (all but the rows ``excluded``) with the ``k`` highest inner
    products with each query, in no particular order. One pass over ``embeddings``, ``EXACT_BLOCK`` rows at a
    time, keeping each query's best ``k`` so far: a memory-mapped array larger than memory is read once."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    excluded = np.sort(np.asarray([] if excluded is None else excluded, dtype=np.int64))
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(embeddings), EXACT_BLOCK):
        block = np.asarray(embeddings[start : start + EXACT_BLOCK], dtype=np.float32)
        scores = queries @ block.T
        inside = excluded[np.searchsorted(excluded, start) : np.searchsorted(excluded, start + len(block))]
        scores[:, inside - start] = -np.inf
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate(
            [best_rows, np.broadcast_to(np.arange(start, start + len(block)), (len(queries), len(block)))],
            axis=1,
        )
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_rows = np.take_along_axis(scores, top, 1), np.take_along_axis(rows, top, 1)
    return best_rows


def reranked(queries: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, k: int):
    """``(scores, rows)`` of the ``k`` of each query's ``candidates`` (``-1``: none) with the highest inner
    products with its full-precision row of ``vectors`` (read row by row: a memory map stays on disk)."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for i, (query, found) in enumerate(zip(queries, candidates, strict=True)):
        found = np.unique(found[found >= 0])  # sorted: the reads run forward through the file
        exact = np.asarray(vectors[found], dtype=np.float32) @ query
        best = np.argsort(-exact, kind="stable")[:k]
        scores[i, : len(best)], rows[i, : len(best)] = exact[best], found[best]
    return scores, rows


def recall_shares(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """``(Q,)``: the share of each query's true ``k`` nearest rows (``truth``) that ``found`` holds."""
    return np.array([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth, strict=True)])


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """The mean share of each query's true ``k`` nearest rows (``truth``) that ``found`` holds."""
    return float(np.mean(recall_shares(found, truth, k)))
