"""``rsitr-search export``: an index as one Parquet file, each live row with its embedding as a fixed-size
list column (``embedding``, float32) beside the row's columns; a scene index's file is GeoParquet 1.1
(:mod:`rsitr_hf.search.geoparquet`), which GeoPandas, DuckDB, GDAL/QGIS and Sedona read without rsitr_hf.
Written shard by shard, a block of rows at a time, beside the target and renamed over it at the end."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..utils.files import atomic_output
from .errors import SearchError
from .geoparquet import geo_schema_metadata, union_bbox
from .index import ImageIndex
from .store import ROWS_FILE, StoreVectors


def export_index(index_dir: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write the index in ``index_dir`` to the Parquet file ``out``; returns a line saying what it wrote."""
    index, out = ImageIndex.load(index_dir), Path(out)
    dim = index.manifest.dim
    schema = export_schema(index)
    with atomic_output(out) as temporary, pq.ParquetWriter(temporary, schema) as writer:
        for shard in index.shards:
            rows, start = shard.live_rows(), 0
            for ids, block in StoreVectors([shard], dim).blocks():
                part = rows.slice(start, len(ids))
                start += len(ids)
                embedding = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel(), pa.float32()), dim)
                writer.write_table(pa.Table.from_arrays([*part.columns, embedding], schema=schema))
    kind = "GeoParquet" if index.tiling is not None else "Parquet"
    return f"{out}: {index.describe()} with their {dim}-dimensional embeddings ({kind})"


def export_schema(index: ImageIndex) -> pa.Schema:
    """The rows' schema plus ``embedding``; for a scene index, ``geo`` metadata whose bbox covers every
    shard's."""
    if not index.shards:
        raise SearchError(f"{index.folder}: the index holds no rows to export")
    rows_schema = pq.read_schema(index.shards[0].path / ROWS_FILE)
    schema = rows_schema.append(pa.field("embedding", pa.list_(pa.float32(), index.manifest.dim)))
    if index.tiling is None:
        return schema.remove_metadata()
    boxes = [shard.bbox() for shard in index.shards]
    return schema.with_metadata(geo_schema_metadata(union_bbox([box for box in boxes if box is not None])))
