"""A scene index of one large synthetic GeoTIFF: tiling speed, peak memory against the scene's size, and where
the top hit lands.

    python benchmarks/bench_scenes.py [--folder /tmp/rsitr_scenes] [--size 20000] [--bands 4] [--model DIR]
        [--batch_size 64]

Writes (once) a ``--size`` x ``--size`` GeoTIFF of ``--bands`` uint16 bands (12-bit noise, tiled 512 x 512,
UTM 33N at 0.5 m), with a white cross planted in one window and a nodata strip on its left, then runs
``rsitr-search index --scenes`` on it in a fresh process (224-px windows every 112 px) and reports its
time, windows per second and peak resident memory (``ru_maxrss`` of the process) beside the scene's size;
then searches the index with an image of the cross (``similar_images``, non-maximum suppression on) and
reports the latency and whether the top hit's WGS84 footprint holds the cross's centre. The model is a
tiny random CLIP (``rsitr_hf.demo.tiny_clip``) unless ``--model`` names another: the figure is the reading
and tiling pipeline's, not a ViT-B/32's (on a GPU the model's share shrinks further).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

ORIGIN, PIXEL = (500_000.0, 5_000_000.0), 0.5


def cross() -> np.ndarray:
    image = np.zeros((224, 224, 3), np.uint8)
    image[40:180, 100:124] = 255
    image[90:120, 30:194] = 255
    return image


def write_scene(path: Path, size: int, bands: int, window: tuple[int, int]) -> None:
    """The scene, written block row by block row (never whole in memory either)."""
    import rasterio
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": rasterio.Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1]),
        "nodata": 0, "tiled": True, "blockxsize": 512, "blockysize": 512, "BIGTIFF": "YES",
    }  # fmt: skip
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as scene:
        for row in range(0, size, 512):
            height = min(512, size - row)
            values = (rng.integers(1, 256, (bands, height, size), dtype=np.uint16) * 16).astype(np.uint16)
            values[:, :, : size // 50] = 0
            column, top = window
            if top < row + height and row < top + 224:
                inside = slice(max(top, row) - row, min(top + 224, row + height) - row)
                planted = cross()[max(top, row) - top : min(top + 224, row + height) - top].transpose(2, 0, 1)
                values[:3, inside, column : column + 224] = planted.astype(np.uint16) * 16
            scene.write(values, window=Window(0, row, size, height))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", type=Path, default=Path("/tmp/rsitr_scenes"))
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument("--model", help="base CLIP (default: a tiny random CLIP)")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()

    from rasterio.warp import transform

    from rsitr_hf.search import ImageIndex, RetrievalModel
    from rsitr_hf.search.query import similar_images

    scenes, index_dir = args.folder / "scenes", args.folder / "index"
    scenes.mkdir(parents=True, exist_ok=True)
    scene = scenes / f"scene_{args.size}_{args.bands}.tif"
    stride_positions = (args.size - 224) // 112
    window = (112 * (2 * stride_positions // 3), 112 * (stride_positions // 3))  # column, row
    if not scene.is_file():
        started = time.perf_counter()
        write_scene(scene, args.size, args.bands, window)
        print(f"wrote {scene} in {time.perf_counter() - started:.0f} s")
    model = args.model
    if model is None:
        from rsitr_hf.demo.synthetic import vocabulary
        from rsitr_hf.demo.tiny_clip import save_tiny_clip

        model = str(save_tiny_clip(args.folder / "tiny_clip", vocabulary()))
    for stale in index_dir.glob("*"):
        stale.unlink()

    command = [
        sys.executable,
        "-m",
        "rsitr_hf.search",
        "index",
        "--scenes",
        str(scenes),
        "--index",
        str(index_dir),
    ]
    command += ["--model", model, "--batch_size", str(args.batch_size), "--ann", "exact"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(result.stdout.strip())

    index = ImageIndex.load(index_dir)
    retrieval = RetrievalModel(model)
    query = PIL.Image.fromarray(cross())
    latencies, hits = [], None
    for _ in range(20):
        started_query = time.perf_counter()
        hits = similar_images(index, retrieval, query, k=10)
        latencies.append(time.perf_counter() - started_query)
    top = hits[0]
    x = ORIGIN[0] + (window[0] + 112) * PIXEL
    y = ORIGIN[1] - (window[1] + 112) * PIXEL
    (longitude,), (latitude,) = transform("EPSG:32633", "EPSG:4326", [x], [y])
    ring = np.asarray(top.footprint)
    holds = (
        ring[:, 0].min() <= longitude <= ring[:, 0].max() and ring[:, 1].min() <= latitude <= ring[:, 1].max()
    )

    scene_mb = args.size * args.size * args.bands * 2 / 2**20
    windows = len(index.files)
    print(
        f"| scene | windows indexed | index time (s) | windows/s | peak RSS (MB) | scene, uncompressed (MB) "
        f"| query p50 (ms) | top hit |\n|---|---|---|---|---|---|---|---|\n"
        f"| {args.size:,}² px, {args.bands} × uint16 | {windows:,} | {seconds:.0f} | {windows / seconds:.0f} "
        f"| {peak_mb:,.0f} | {scene_mb:,.0f} | {1000 * statistics.median(latencies):.1f} "
        f"| {top.describe()} ({top.score:.3f}); footprint holds the cross: {holds} |"
    )


if __name__ == "__main__":
    main()
