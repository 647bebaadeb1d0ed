"""ANN (FAISS through ``rsitr_hf.search.ann``) against exact search on unit vectors, on this machine.

    python benchmarks/bench_ann.py [--data clustered|weak] [--num_vectors 1000000] [--dim 512]
        [--queries 1000] [--kinds ivf hnsw ivfpq] [--target_recall 0.95] [--nprobe N] [--on_disk DIR]
        [--exact_queries 50]

The vectors imitate CLIP embeddings (synthetic, seeded). ``clustered``: a shared direction, one of
``--clusters`` centres and noise, normalised: tight neighbourhoods, which IVF finds in a few lists.
``weak``: the same with centres weak against the noise (``--centre_strength``, default 0.35), as the
embeddings of many similar tiles: neighbourhoods spread over many lists. Queries are fresh vectors drawn
the same way. For each index kind (calibrated to ``--target_recall`` unless ``--nprobe`` fixes IVF's
setting) it reports the setting chosen, the recall the index measured of itself, the recall@10 of the fresh
queries against exact search, build time (calibration included), top-10 query latency (one query at a
time, p50 / p95) and the resident memory of the index loaded in a fresh process; and exact search's
latency on the same data.
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

from rsitr_hf.search.ann import ANNConfig, ANNIndex, exact_neighbours, recall_at_k


def unit_vectors(
    count: int, dim: int, clusters: int, seed: int, centre_strength: float = 1.0, folder: Path | None = None
) -> np.ndarray:
    """``(count, dim)`` unit vectors, in memory or, given ``folder``, in a memory-mapped ``.npy`` file there
    (written 100,000 rows at a time: ten million vectors need 20 GB of disk, not of memory; a file there
    from an earlier run with the same arguments is reused)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((clusters, dim)).astype(np.float32)
    shared = np.random.default_rng(54321).standard_normal(dim).astype(np.float32)
    name = f"vectors-{count}x{dim}-{clusters}-{centre_strength:g}-{seed}.npy"
    path = None if folder is None else Path(folder) / name
    if path is not None and path.is_file():  # written by an earlier run (same seed, size and data)
        return np.load(path, mmap_mode="r")
    if path is None:
        vectors = np.empty((count, dim), dtype=np.float32)
    else:
        vectors = np.lib.format.open_memmap(path, "w+", np.float32, (count, dim))
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        members = rng.integers(0, clusters, stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block = 0.8 * shared + centre_strength * centres[members] + 0.9 * noise
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    if path is not None:
        vectors.flush()
        vectors = np.load(path, mmap_mode="r")
    return vectors


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


def measure(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, config: ANNConfig) -> dict:
    """Build, calibrate, query one at a time and load in a fresh process: one row of the table."""
    started = time.perf_counter()
    index = ANNIndex.build(vectors, config)
    build_seconds = time.perf_counter() - started
    latency, found = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(index.search(query[None], 10)[1][0])
        latency.append(time.perf_counter() - started)
    recall = recall_at_k(np.asarray(found), truth, 10)
    with tempfile.TemporaryDirectory() as folder:
        settings = index.save(folder)
        before, after = map(float, subprocess.run(
            [sys.executable, "-c", LOADED_RSS, folder, json.dumps(settings)],
            capture_output=True, text=True, check=True,
        ).stdout.split()[-2:])  # fmt: skip
    measured = index.calibration
    return {
        "index": index.factory,
        "setting": (f"{measured.parameter} {measured.value}" if measured else "–")
        + (f", {measured.rerank} candidates a result re-ranked" if measured and measured.rerank else ""),
        "self_measured": f"{measured.recall:.3f}" + ("" if measured.reached else " (below target)")
        if measured
        else "–",
        "recall": recall,
        "build": build_seconds,
        "p50": 1000 * statistics.median(latency),
        "p95": 1000 * statistics.quantiles(latency, n=20)[18],
        "rss": after - before,
        "process_before": before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=("clustered", "weak"), default="clustered")
    parser.add_argument("--num_vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--centre_strength", type=float, default=0.35, help="weak data: the centres' weight")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", nargs="+", default=["ivf"], choices=("flat", "ivf", "hnsw", "ivfpq"))
    parser.add_argument("--target_recall", type=float, default=0.95)
    parser.add_argument("--nprobe", type=int, help="IVF: this fixed setting instead of calibration")
    parser.add_argument(
        "--on_disk", type=Path, help="write the vectors to a memory-mapped file in this folder (10M and up)"
    )
    parser.add_argument("--exact_queries", type=int, default=50, help="queries timed for exact search")
    args = parser.parse_args()

    strength = args.centre_strength if args.data == "weak" else 1.0
    vectors = unit_vectors(args.num_vectors, args.dim, args.clusters, 0, strength, args.on_disk)
    queries = unit_vectors(args.queries, args.dim, args.clusters, 1, strength)
    truth = exact_neighbours(queries, vectors, k=10)
    exact_latency = []
    for query in queries[: args.exact_queries]:
        started = time.perf_counter()
        exact_neighbours(query[None], vectors, k=10)
        exact_latency.append(time.perf_counter() - started)

    rows = [
        measure(
            vectors,
            queries,
            truth,
            ANNConfig(kind=kind, nprobe=args.nprobe, target_recall=args.target_recall),
        )
        for kind in args.kinds
    ]
    lines = [
        f"{args.num_vectors:,} x {args.dim} unit vectors ({args.data}: {args.clusters} clusters, centre "
        f"weight {strength:g}), {args.queries} fresh queries, top-10, target recall {args.target_recall:g}",
        "| index | setting | recall measured by the index | recall@10 of the queries | build (s) "
        "| query p50 (ms) | query p95 (ms) | index RSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['index']} | {row['setting']} | {row['self_measured']} | {row['recall']:.3f} "
            f"| {row['build']:.1f} | {row['p50']:.2f} | {row['p95']:.2f} | {row['rss']:,.0f} |"
        )
    exact_ms = 1000 * statistics.median(exact_latency)
    lines.append(f"| exact (numpy, one query) | – | – | 1.000 | – | {exact_ms:.2f} | – | – |")
    lines.append(f"a fresh process holds {rows[0]['process_before']:,.0f} MB before loading an index")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
