"""Approximate nearest-neighbour search over unit embeddings with FAISS, through ``datasets``' FAISS
integration (:class:`datasets.search.FaissIndex`: building, batched search, saving and loading).

Inner product on unit vectors is cosine similarity. The index type follows the number of vectors unless
given: an exact flat index below ``flat_below`` (100,000), IVF above it (``IVF<nlist>,Flat`` with ``nlist``
about ``sqrt(N)``, trained on a seeded sample, searched with ``nprobe`` lists), or HNSW
(``HNSW<m>,Flat`` searched with ``ef_search``). Needs ``faiss-cpu`` (``pip install "rsitr_hf[search]"``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..utils.errors import InputError

ANN_KINDS = ("auto", "exact", "flat", "ivf", "hnsw")
TRAINING_POINTS_PER_LIST = 64  # k-means sample: enough for stable centroids, a few seconds at 1M vectors


class ANNUnavailable(InputError):
    """FAISS is not installed; the message says how to get it."""


def require_faiss():
    try:
        import faiss
    except ImportError:
        raise ANNUnavailable(
            'approximate search needs FAISS: pip install faiss-cpu (or pip install -e ".[search]")'
        ) from None
    return faiss


@dataclass
class ANNConfig:
    """How an ANN index is built and searched.

    Args:
        kind: ``auto`` (exact search without FAISS below ``flat_below`` vectors, else IVF), ``exact`` (never
            FAISS: brute force, the reference), ``flat`` (FAISS's exact index), ``ivf`` or ``hnsw``.
        flat_below: with ``auto``, the size under which search stays exact.
        nlist: IVF lists (``None``: ``sqrt(N)`` rounded to a power of two, at most ``N // 39``).
        nprobe: IVF lists searched per query.
        hnsw_m: HNSW neighbours per node.
        ef_search: HNSW candidate list length at search time.
        seed: seed of the k-means training sample.
    """

    kind: str = "auto"
    flat_below: int = 100_000
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ANN_KINDS:
            raise InputError(f"ann kind: expected one of {list(ANN_KINDS)}, got {self.kind!r}")

    def uses_faiss(self, num_vectors: int) -> bool:
        """Whether ``num_vectors`` vectors get a FAISS index (``exact``, and ``auto`` below ``flat_below``,
        are searched by brute force)."""
        return self.kind != "exact" and not (self.kind == "auto" and num_vectors < self.flat_below)

    def factory(self, num_vectors: int) -> str:
        """The FAISS index factory string for ``num_vectors`` vectors."""
        kind = self.kind
        if kind == "auto":
            kind = "flat" if num_vectors < self.flat_below else "ivf"
        if kind in ("flat", "exact"):
            return "Flat"
        if kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        return f"IVF{self.lists_for(num_vectors)},Flat"

    def lists_for(self, num_vectors: int) -> int:
        if self.nlist is not None:
            return self.nlist
        suggested = 2 ** round(math.log2(max(1.0, math.sqrt(num_vectors))))
        return max(1, min(suggested, num_vectors // 39))  # FAISS wants >= 39 training points per list


class ANNIndex:
    """A FAISS index over ``(N, D)`` float32 unit vectors; row ``i`` of the embeddings is id ``i``."""

    def __init__(self, faiss_index, config: ANNConfig, factory: str):
        self.index = faiss_index  # a datasets.search.FaissIndex
        self.config = config
        self.factory = factory
        self.apply_search_parameters()

    @classmethod
    def build(cls, embeddings: np.ndarray, config: ANNConfig | None = None) -> ANNIndex:
        faiss = require_faiss()
        from datasets.search import FaissIndex

        config = config or ANNConfig()
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        factory = config.factory(len(vectors))
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:  # IVF: k-means on a seeded sample (datasets would take the first rows)
            wanted = TRAINING_POINTS_PER_LIST * config.lists_for(len(vectors))
            rows = np.random.default_rng(config.seed).permutation(len(vectors))[:wanted]
            index.train(vectors[np.sort(rows)])
        wrapped = FaissIndex(custom_index=index)
        wrapped.add_vectors(vectors, batch_size=65_536)
        return cls(wrapped, config, factory)

    def can_extend(self, config: ANNConfig, num_vectors: int) -> bool:
        """Whether this index, grown to ``num_vectors`` by :meth:`add`, is what ``config`` would build: same
        settings, same index type at the new size (IVF's list count doubles when ``N`` quadruples)."""
        return config == self.config and config.factory(num_vectors) == self.factory

    def add(self, embeddings: np.ndarray) -> None:
        """Append ``(M, D)`` vectors as ids ``len(self)`` to ``len(self) + M - 1`` (IVF keeps its lists)."""
        self.index.add_vectors(np.ascontiguousarray(embeddings, dtype=np.float32), batch_size=65_536)

    def apply_search_parameters(self) -> None:
        faiss = require_faiss()
        parameters = faiss.ParameterSpace()
        if self.factory.startswith("IVF"):
            parameters.set_index_parameter(self.index.faiss_index, "nprobe", self.config.nprobe)
        elif self.factory.startswith("HNSW"):
            parameters.set_index_parameter(self.index.faiss_index, "efSearch", self.config.ef_search)

    def __len__(self) -> int:
        return self.index.faiss_index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, each ``(Q, k)``, best first (rows of -1 where fewer than ``k`` were found)."""
        result = self.index.search_batch(np.ascontiguousarray(queries, dtype=np.float32), k=min(k, len(self)))
        return np.asarray(result.total_scores), np.asarray(result.total_indices)

    def save(self, path: str | os.PathLike) -> dict:
        """Write the index to ``path``; returns its settings (config and factory), to be stored beside it."""
        self.index.save(path)
        return {**asdict(self.config), "factory": self.factory}

    @classmethod
    def load(cls, path: str | os.PathLike, settings: dict) -> ANNIndex:
        require_faiss()
        from datasets.search import FaissIndex

        settings = dict(settings)
        factory = settings.pop("factory")
        return cls(FaissIndex.load(path), ANNConfig(**settings), factory)
