"""The index's append-only store at archive scale, on this machine: synthetic embeddings written as shards
the way ``rsitr-search index`` writes them (``rsitr_hf.search.store`` / ``update``; no model: the vectors
are bench_ann.py's seeded imitation of CLIP embeddings), then the FAISS index, an append, and queries.

    python benchmarks/bench_store.py --folder /tmp/store [--num_vectors 1000000] [--append 100000]
        [--data clustered|weak] [--ann ivfpq] [--dtype float32|float16] [--queries 1000]

Reports: the time to write the shards and to build (and calibrate) the FAISS index; the time and the bytes
written to append ``--append`` rows (a new shard and the FAISS index extended: nothing else is rewritten)
against the store's size; query latency (top-10, one query at a time, p50 / p95) through
``ImageIndex.search`` at the calibrated setting; recall@10 of fresh queries against exact search over the
store; the memory of a fresh process that opens the index and answers the queries (its own, anonymous
memory, and the pages of the memory-mapped files it touched, which belong to the page cache); and, for
``--dtype float16``, the recall@10 of exact search over the float16 rows against the float32 truth.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_ann import unit_vectors

from rsitr_hf.evaluation.inference import ModelIdentity
from rsitr_hf.search.ann import ANNConfig, exact_neighbours, recall_at_k
from rsitr_hf.search.geoparquet import image_rows
from rsitr_hf.search.index import ImageIndex
from rsitr_hf.search.store import Manifest, Shard, write_shard
from rsitr_hf.search.update import SHARD_ROWS, commit, update_ann

QUERY_PROCESS = """
import sys, time, numpy as np
from rsitr_hf.search.index import ImageIndex
def rss_mb(kind):  # RssAnon: the process's own memory; RssFile: pages of mapped files (the page cache's)
    return int(next(l for l in open("/proc/self/status") if l.startswith(kind)).split()[1]) / 1024
before = rss_mb("RssAnon")
index = ImageIndex.load(sys.argv[1])
queries = np.load(sys.argv[2])
latency = []
for query in queries:
    started = time.perf_counter()
    index.search(query[None], 10)
    latency.append(time.perf_counter() - started)
print(before, rss_mb("RssAnon"), rss_mb("RssFile"), *latency)
"""


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def append_shards(index: ImageIndex, vectors: np.ndarray) -> None:
    """Write ``vectors`` as new shards of ``index`` (at most ``SHARD_ROWS`` rows each) and commit each."""
    manifest = index.manifest
    for start in range(0, len(vectors), SHARD_ROWS):
        block = np.asarray(vectors[start : start + SHARD_ROWS])
        ids = list(range(manifest.next_id, manifest.next_id + len(block)))
        rows = image_rows(ids, [f"tiles/{row:010d}.png" for row in ids])
        entry = write_shard(index.folder, block, rows, manifest.dtype, None, manifest.next_id)
        index.shards.append(Shard(index.folder, entry, manifest))
        manifest.shards.append(entry)
        manifest.next_id = entry.end_id
        commit(index)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", type=Path, required=True, help="where the store is written (emptied)")
    parser.add_argument("--num_vectors", type=int, default=1_000_000)
    parser.add_argument("--append", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--data", choices=("clustered", "weak"), default="clustered")
    parser.add_argument("--centre_strength", type=float, default=0.35, help="weak data: the centres' weight")
    parser.add_argument("--ann", default="ivfpq", choices=("auto", "exact", "ivf", "hnsw", "ivfpq"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()

    strength = args.centre_strength if args.data == "weak" else 1.0
    total = args.num_vectors + args.append
    vectors = unit_vectors(total, args.dim, args.clusters, 0, strength, args.folder.parent)
    queries = np.ascontiguousarray(unit_vectors(args.queries, args.dim, args.clusters, 1, strength))
    index_dir = args.folder
    if index_dir.exists():
        subprocess.run(["rm", "-rf", str(index_dir)], check=True)
    index_dir.mkdir(parents=True)
    manifest = Manifest(str(index_dir), ModelIdentity("synthetic", None, []), args.dim, args.dtype)
    index = ImageIndex(index_dir, manifest, [])

    started = time.perf_counter()
    append_shards(index, vectors[: args.num_vectors])
    write_seconds = time.perf_counter() - started
    config = ANNConfig(kind=args.ann)
    started = time.perf_counter()
    index = ImageIndex(index_dir, manifest, index.shards)
    built = update_ann(index, config)
    ann_seconds = time.perf_counter() - started
    store_bytes = folder_bytes(index_dir)

    before = {path: path.stat().st_mtime_ns for path in index_dir.rglob("*") if path.is_file()}
    started = time.perf_counter()
    index = ImageIndex.load(index_dir)
    append_shards(index, vectors[args.num_vectors :])
    index = ImageIndex(index_dir, index.manifest, index.shards, index.ann)
    extended = update_ann(index, config)
    append_seconds = time.perf_counter() - started
    written = sum(
        path.stat().st_size
        for path in index_dir.rglob("*")
        if path.is_file() and before.get(path) != path.stat().st_mtime_ns
    )

    truth = exact_neighbours(queries, vectors, k=10)
    np.save(index_dir.parent / "queries.npy", queries)
    output = subprocess.run(
        [sys.executable, "-c", QUERY_PROCESS, str(index_dir), str(index_dir.parent / "queries.npy")],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    anon_before, anon_after, mapped = map(float, output[:3])
    latency = [float(value) for value in output[3:]]
    found = ImageIndex.load(index_dir).search(queries, 10)[1]
    index = ImageIndex.load(index_dir)

    p50, p95 = statistics.median(latency), statistics.quantiles(latency, n=20)[18]
    recall = recall_at_k(found, truth, 10)
    lines = [
        f"{args.num_vectors:,} x {args.dim} unit vectors ({args.data}), stored as {args.dtype} in shards of "
        f"{SHARD_ROWS:,} rows; then {args.append:,} appended; {args.queries} fresh queries, top-10",
        f"write shards: {write_seconds:.1f} s; FAISS: {built} in {ann_seconds:.1f} s; "
        f"store {store_bytes / 1e9:.2f} GB",
        f"append {args.append:,}: {append_seconds:.1f} s, {written / 1e9:.3f} GB written "
        f"({100 * written / store_bytes:.1f} % of the store); FAISS: {extended}",
        f"search: {index.backend()}",
        f"query p50 {1000 * p50:.2f} ms, p95 {1000 * p95:.2f} ms; recall@10 {recall:.3f}; "
        f"query process: {anon_after - anon_before:,.0f} MB of its own memory for the index (anonymous RSS "
        f"{anon_after:,.0f} MB, {anon_before:,.0f} MB before opening it), {mapped:,.0f} MB of mapped file "
        "pages",
    ]
    if args.dtype == "float16":
        half = recall_at_k(exact_neighbours(queries, index.vectors, 10), truth, 10)
        lines.append(f"exact search over the float16 rows: recall@10 {half:.4f} against float32")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
