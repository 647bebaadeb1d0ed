"""Retrieval in practice: index a folder of images once, then search it by text (``rsitr-search``).

    rsitr-search index IMAGE_DIR --index INDEX_DIR --model BASE [--adapter ADAPTER] [--batch_size 32]
        [--ann auto|exact|flat|ivf|hnsw|ivfpq] [--target_recall 0.95] [--calibration_texts QUERIES.txt]
    rsitr-search index --scenes SCENE_DIR --index INDEX_DIR --model BASE [--tile 224 --stride 112]
        [--tile_unit pixels|metres] [--bands 4,3,2] [other options as above]
    rsitr-search query --index INDEX_DIR --text "many planes parked at the airport" [--text ...] [--top_k 5]
    rsitr-search query --index INDEX_DIR --image PATH [--captions CAPTIONS.txt] [--top_k 5]
        [--model BASE --adapter ADAPTER] [--json FILE|-] [--geojson FILE] [--max_overlap 0]
        [--bbox MINLON,MINLAT,MAXLON,MAXLAT | --within AREA.geojson]
    rsitr-search compact --index INDEX_DIR
    rsitr-search export --index INDEX_DIR OUT.parquet

``index`` embeds every image under IMAGE_DIR (recursively; ``.jpg/.jpeg/.png/.tif/.tiff/.bmp/.webp``) with the
base CLIP model (a folder or Hub id) and optional PEFT adapter (a folder or Hub id) into INDEX_DIR, an
append-only store (:mod:`rsitr_hf.search.store`): shards of embeddings (``(N, D)`` unit vectors, float32, or
float16 with ``--dtype float16``) each with a Parquet table of its rows, listed by ``manifest.json`` (the
image folder, the model's identity, the shards). Run again on the same folder, it embeds only the images
that are new, into new shards, and records the ones that are gone as deletions; ``compact`` rewrites the
shards that have deletions. ``export`` writes the rows and their embeddings as one Parquet file
(GeoParquet for a scene index). An index of rsitr_hf 0.2 (``index.json``) is converted by its next
update.

Above 100,000 images (``--ann auto``), or whenever ``--ann flat|ivf|hnsw`` asks, a FAISS index over the
embeddings (:mod:`rsitr_hf.search.ann`) is made at the end of the run and saved as ``ann-<id>.faiss``,
named in the manifest; queries then go through it (rows deleted since are left out as FAISS searches, rows
added since are searched exactly). ``--ann exact`` never uses FAISS. A run that adds or drops images extends
the FAISS index (IVF keeps its trained lists); one whose size calls for another index type (``auto``
crossing 100,000; IVF's list count doubling when the size quadruples) builds it again. An IVF or HNSW index
measures its own recall@10 against exact search whenever it is built or extended (up to 1,000 of the
vectors added, drawn seeded and held out of it as queries) and searches with the smallest ``nprobe`` /
``efSearch`` that reaches ``--target_recall``, or says plainly that none does; the figure is printed, stored
in the manifest and shown by ``rsitr-app``. With ``--ann auto``, an index that cannot reach the target is
not used: search is exact, and the output and the app say why. ``--calibration_texts FILE`` adds real text
queries (one per line) to that measurement.

``index --scenes SCENE_DIR`` indexes large scenes (GeoTIFF, or any large image GDAL reads) instead: each
is cut into square windows of ``--tile`` every ``--stride`` (pixels, or metres with ``--tile_unit metres``
for scenes in a projected CRS), read window by window (never a whole scene in memory), and every window
with valid pixels is a row; the shards also keep each scene's size, bands, value scaling, CRS and
geotransform, and each row's window and footprint (:mod:`rsitr_hf.search.scenes` says how bands, bit
depths and nodata are read). A query then answers with windows: the scene, the pixel window and, for a
georeferenced scene, its footprint in WGS84; windows overlapping a better hit of their scene (by more than
``--max_overlap``, intersection over union) are dropped, so the top-k are k places. ``--geojson FILE`` writes
the hits as a GeoJSON FeatureCollection (one polygon per hit with query, rank, score, scene and window),
which QGIS opens.
Needs rasterio (``pip install -e ".[scenes]"``).

Embedding can be spread over processes (GPUs or nodes) with ``accelerate launch -m rsitr_hf.search index
...``: batches are dealt out in turn, the main process gathers them in order and writes the shards, equal to
a one-process build. What is embedded so far is committed as a shard every ``SAVE_EVERY_SECONDS`` (5
minutes), so an interrupted run keeps its work.

Every change is committed by replacing ``manifest.json`` (a rename) after the shards it names are written,
so a kill at any point leaves the previous index or the new one; the next run removes what a kill left.
One indexer at a time updates an index (a file lock, ``INDEX_DIR/.lock``; a second one waits). A damaged or
crafted manifest is refused with what to do.

The model identity is the base and adapter names plus a fingerprint: the embeddings of a fixed probe
image and caption. An index is only ever extended or queried with the model that built it: a different
base, adapter or weights (even under the same names) is refused with an error naming both.

``query`` ranks the indexed images for each ``--text`` (text -> image) or for an ``--image`` (image -> image),
or the captions of a caption file (one per line) for an ``--image`` with ``--captions`` (image -> text), and
prints a table; ``--json`` writes the results too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..evaluation.inference import RetrievalModel
from ..utils.cli import HelpFormatter, command, command_parser, parse_arguments
from ..utils.distributed import Shards
from ..utils.files import write_json, write_text
from .ann import ANN_KINDS, ANNConfig
from .errors import SearchError
from .export import export_index
from .index import open_index, read_image
from .query import (
    Hit,
    format_table,
    hits_geojson,
    read_captions,
    search_captions,
    search_images,
    similar_images,
)
from .scenes import TILE_UNITS, Tiling
from .spatial import bbox_area, geojson_area
from .store import STORED_DTYPES
from .update import build_index, compact


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    index_help, query_help = (
        "embed a folder of images, or of large scenes window by window (only the new ones)",
        "text -> images, image -> images, or image -> captions",
    )
    index_parser = commands.add_parser(
        "index", help=index_help, description=index_help, formatter_class=HelpFormatter
    )
    index_parser.add_argument("image_dir", nargs="?", help="the folder of images (searched recursively)")
    index_parser.add_argument(
        "--scenes",
        metavar="SCENE_DIR",
        help="index the large scenes of this folder, window by window, instead",
    )
    index_parser.add_argument("--tile", type=float, default=224, help="--scenes: window size (--tile_unit)")
    index_parser.add_argument("--stride", type=float, default=112, help="--scenes: window step (--tile_unit)")
    index_parser.add_argument(
        "--tile_unit",
        default="pixels",
        choices=TILE_UNITS,
        help="--scenes: --tile and --stride in pixels, or in metres (scenes in a projected CRS in metres)",
    )
    index_parser.add_argument(
        "--bands",
        type=band_list,
        help="--scenes: the 1-based bands read as red,green,blue (or one band as grey), e.g. 4,3,2 (default: "
        "the bands marked red, green, blue, else 1,2,3, else 1)",
    )
    index_parser.add_argument("--index", required=True, help="the index folder to create or update")
    index_parser.add_argument("--model", required=True, help="base CLIP model (folder or Hub id)")
    index_parser.add_argument("--adapter", help="PEFT adapter (folder or Hub id)")
    index_parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    index_parser.add_argument(
        "--ann",
        default="auto",
        choices=ANN_KINDS,
        help="search backend: auto (exact below 100,000 images, else FAISS IVF), exact, or a FAISS index "
        "(flat, ivf, hnsw, or ivfpq: 64-byte product-quantised codes in memory, candidates re-ranked from "
        "the embeddings on disk; needs faiss-cpu)",
    )
    index_parser.add_argument(
        "--target_recall",
        type=float,
        default=0.95,
        help="IVF and HNSW: the recall@10 against exact search that the index calibrates its search setting "
        "to (measured with up to 1,000 indexed vectors held out as queries when it is built or extended; "
        "reported, and stored in the manifest)",
    )
    index_parser.add_argument(
        "--calibration_texts",
        metavar="FILE",
        help="IVF, HNSW, ivfpq: real text queries, one per line, on which the index measures its recall "
        "beside the held-out vectors (the setting then reaches the target on both)",
    )
    index_parser.add_argument(
        "--dtype",
        choices=STORED_DTYPES,
        help="how a new index stores its embeddings: float32 (default), or float16 (half the disk and page "
        "cache; its effect on recall is measured in docs/search.md); an index keeps its own",
    )
    compact_help = "rewrite the shards that have deleted rows, without them (row ids are kept)"
    compact_parser = commands.add_parser(
        "compact", help=compact_help, description=compact_help, formatter_class=HelpFormatter
    )
    compact_parser.add_argument("--index", required=True, help="the index folder")
    export_help = "write the index's rows and embeddings as one Parquet file (GeoParquet for scenes)"
    export_parser = commands.add_parser(
        "export", help=export_help, description=export_help, formatter_class=HelpFormatter
    )
    export_parser.add_argument("--index", required=True, help="the index folder")
    export_parser.add_argument("out", help="the Parquet file to write (replaced atomically)")
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
    query_parser.add_argument(
        "--geojson", help="scene index: also write the hits as a GeoJSON FeatureCollection to this file"
    )
    area = query_parser.add_mutually_exclusive_group()
    area.add_argument(
        "--bbox",
        metavar="MINLON,MINLAT,MAXLON,MAXLAT",
        help="scene index: only hits whose footprint intersects this WGS84 box (needs shapely)",
    )
    area.add_argument(
        "--within",
        metavar="FILE.geojson",
        help="scene index: only hits whose footprint intersects the polygons of this GeoJSON file",
    )
    query_parser.add_argument(
        "--max_overlap",
        type=float,
        default=0.0,
        help="scene index: drop a window overlapping a better hit of its scene by more than this "
        "intersection over union (0: any overlap; 1: keep all)",
    )
    args = parse_arguments(parser, argv)
    if args.command == "index":
        if bool(args.image_dir) == bool(args.scenes):
            raise SearchError("give an IMAGE_DIR, or --scenes SCENE_DIR (not both)")
        tiling = Tiling(args.tile, args.stride, args.tile_unit, args.bands) if args.scenes else None
        shards = Shards.from_launcher()
        model = RetrievalModel(args.model, args.adapter, device=shards.device)
        config = ANNConfig(kind=args.ann, target_recall=args.target_recall)
        folder = args.scenes or args.image_dir
        texts = read_captions(args.calibration_texts) if args.calibration_texts else None
        update = build_index(
            folder, args.index, model, args.batch_size, config, shards, tiling, texts, args.dtype
        )
        if shards.is_main:
            print(update.describe(args.index))
            if update.calibration is not None:
                print(f"{args.index}: search {update.calibration.describe()}")
        shards.close()
        return 0
    if args.command == "compact":
        print(compact(args.index))
        return 0
    if args.command == "export":
        print(export_index(args.index, args.out))
        return 0
    return run_query(args)


def run_query(args) -> int:
    if bool(args.text) == bool(args.image) or (args.captions and not args.image):
        raise SearchError("give --text QUERY (repeatable), or --image PATH (with --captions FILE: captions)")
    index, model = open_index(args.index, args.model, args.adapter)
    for flag, given in (("--geojson", args.geojson), ("--bbox", args.bbox), ("--within", args.within)):
        if given and (index.tiling is None or args.captions):
            raise SearchError(f"{flag}: {args.index} is not a scene index (rsitr-search index --scenes)")
    area = bbox_area(args.bbox) if args.bbox else geojson_area(args.within) if args.within else None
    if args.captions:
        key, queries, prefix, print_prefix = "caption", [str(args.image)], None, ""
        found = [search_captions(model, args.image, read_captions(args.captions), args.top_k)]
    else:  # the table shows paths relative to the indexed folder, the JSON full paths
        kind = "images" if index.tiling is None else "scenes"
        key, prefix, print_prefix = "path", Path(index.root), f" ({kind} under {index.root})"
        if args.text:
            queries = args.text
            found = search_images(index, model, args.text, args.top_k, args.max_overlap, area)
        else:
            queries, image = [str(args.image)], read_image(Path(args.image))
            found = [similar_images(index, model, image, args.top_k, args.max_overlap, area)]
    if args.json != "-":
        for query, hits in zip(queries, found, strict=True):
            print(format_table(query + print_prefix, hits))
    if args.json:
        results = [
            {"query": query, "hits": [hit_record(hit, key, prefix) for hit in hits]}
            for query, hits in zip(queries, found, strict=True)
        ]
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            write_text(args.json, text)
    if args.geojson:
        collection = hits_geojson(list(zip(queries, found, strict=True)))
        write_json(args.geojson, collection, indent=1)
    return 0


def hit_record(hit: Hit, key: str, prefix: Path | None) -> dict:
    """A hit for ``--json``: rank, score, the item (a full path under ``prefix``), and a tile's window and
    footprint."""
    record = {"rank": hit.rank, "score": hit.score, key: str(prefix / hit.item) if prefix else hit.item}
    if hit.window is not None:
        record |= {"window": list(hit.window), "footprint": hit.footprint}
    return record


def band_list(text: str) -> tuple[int, ...]:
    """``"4,3,2"`` -> ``(4, 3, 2)``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected band numbers separated by commas, got {text!r}") from None
