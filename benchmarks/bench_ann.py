"""ANN (FAISS through ``rsitr_hf.ann``) against exact search on clustered unit vectors, on this machine.

    python benchmarks/bench_ann.py [--num_vectors 1000000] [--dim 512] [--queries 1000] [--kind auto]

The vectors imitate CLIP embeddings (synthetic, seeded): a shared direction, one of ``--clusters`` centres
and noise, normalised. Queries are fresh vectors drawn the same way. Reports build time, top-10 query
latency (one query at a time, p50 / p95), recall@10 against exact search, exact search's latency on the
same data, and the resident memory of the index loaded in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rsitr_hf.search.ann import ANNConfig, ANNIndex


def clustered_unit_vectors(count: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((clusters, dim)).astype(np.float32)
    shared = np.random.default_rng(54321).standard_normal(dim).astype(np.float32)
    vectors = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        members = rng.integers(0, clusters, stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        vectors[start:stop] = 0.8 * shared + centres[members] + 0.9 * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


LOADED_RSS = """
import sys, json
from rsitr_hf.search.ann import ANNIndex
def rss_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024
before = rss_mb()
index = ANNIndex.load(sys.argv[1], json.loads(sys.argv[2]))
print(before, rss_mb())
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kind", default="auto")
    parser.add_argument("--nprobe", type=int, default=ANNConfig.nprobe)
    args = parser.parse_args()

    vectors = clustered_unit_vectors(args.num_vectors, args.dim, args.clusters, seed=0)
    queries = clustered_unit_vectors(args.queries, args.dim, args.clusters, seed=1)
    started = time.perf_counter()
    truth = exact_top_k(vectors, queries, 10)
    exact_batch_seconds = time.perf_counter() - started
    exact_latency = []
    for query in queries[:50]:
        started = time.perf_counter()
        exact_top_k(vectors, query[None], 10)
        exact_latency.append(time.perf_counter() - started)

    config = ANNConfig(kind=args.kind, nprobe=args.nprobe)
    started = time.perf_counter()
    index = ANNIndex.build(vectors, config)
    build_seconds = time.perf_counter() - started
    latency, found = [], []
    for query in queries:
        started = time.perf_counter()
        _, rows = index.search(query[None], 10)
        latency.append(time.perf_counter() - started)
        found.append(rows[0])
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index.faiss"
        settings = index.save(path)
        before, after = map(float, subprocess.run(
            [sys.executable, "-c", LOADED_RSS, str(path), json.dumps(settings)],
            capture_output=True, text=True, check=True,
        ).stdout.split()[-2:])  # fmt: skip
    quantiles = statistics.quantiles(latency, n=20)
    print(
        f"{args.num_vectors:,} x {args.dim} unit vectors ({args.clusters} clusters), {args.queries} queries, "
        f"top-10\n"
        f"| search | build (s) | query p50 (ms) | query p95 (ms) | recall@10 | index RSS (MB) |\n"
        f"|---|---|---|---|---|---|\n"
        f"| {index.factory}, nprobe {config.nprobe} | {build_seconds:.1f} "
        f"| {1000 * statistics.median(latency):.2f} | {1000 * quantiles[18]:.2f} | {recall:.3f} "
        f"| {after - before:,.0f} |\n"
        f"| exact (numpy, one query) | – | {1000 * statistics.median(exact_latency):.2f} | – | 1.000 | – |\n"
        f"exact search of all {args.queries} queries as one batch: {exact_batch_seconds:.1f} s; a fresh "
        f"process holds {before:,.0f} MB before loading the index (Python, torch, transformers), "
        f"{after:,.0f} MB after"
    )


if __name__ == "__main__":
    main()
