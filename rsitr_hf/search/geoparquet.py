"""The row tables of an index as Parquet, and those of a scene index as GeoParquet 1.1: each window's
footprint as a WKB polygon in WGS84 (``OGC:CRS84``, longitude then latitude: the CRS GeoParquet assumes
when the column names none, as here), with a ``bbox`` covering column
(``xmin, ymin, xmax, ymax``), and the file-level ``geo`` metadata that GeoPandas, DuckDB's spatial
extension, GDAL/QGIS and Sedona read (https://geoparquet.org/releases/v1.1.0/). A scene without
georeference has a null geometry and bbox.
"""

from __future__ import annotations

import json
import struct

import pyarrow as pa

GEOPARQUET_VERSION = "1.1.0"
BBOX_TYPE = pa.struct([(name, pa.float64()) for name in ("xmin", "ymin", "xmax", "ymax")])
WKB_POLYGON = 3


def polygon_wkb(ring: list[list[float]]) -> bytes:
    """A closed ring of ``[longitude, latitude]`` as a little-endian WKB Polygon (ISO, 2D)."""
    points = b"".join(struct.pack("<2d", x, y) for x, y in ring)
    return struct.pack("<BIII", 1, WKB_POLYGON, 1, len(ring)) + points


def wkb_polygon_ring(wkb: bytes) -> list[list[float]]:
    """The exterior ring of a WKB Polygon written by :func:`polygon_wkb`, as ``[longitude, latitude]``."""
    order, kind, rings, points = struct.unpack_from("<BIII", wkb)
    if order != 1 or kind != WKB_POLYGON or rings < 1:
        raise ValueError("not a little-endian WKB Polygon")
    values = struct.unpack_from(f"<{2 * points}d", wkb, 13)
    return [[values[i], values[i + 1]] for i in range(0, len(values), 2)]


def ring_bbox(ring: list[list[float]]) -> dict[str, float]:
    xs, ys = [point[0] for point in ring], [point[1] for point in ring]
    return {"xmin": min(xs), "ymin": min(ys), "xmax": max(xs), "ymax": max(ys)}


def union_bbox(boxes: list[list[float]]) -> list[float] | None:
    """The bbox ``[xmin, ymin, xmax, ymax]`` covering ``boxes`` (``None`` when there are none)."""
    if not boxes:
        return None
    return [
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    ]


def geo_metadata(bbox: list[float] | None) -> dict:
    """The ``geo`` key of a GeoParquet 1.1 file whose ``geometry`` column holds polygons covering ``bbox``."""
    column = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],  # no "crs": GeoParquet's default, OGC:CRS84 (WGS84, longitude first)
        "covering": {"bbox": {key: ["bbox", key] for key in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if bbox is not None:
        column["bbox"] = bbox
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}


def geo_schema_metadata(bbox: list[float] | None) -> dict[bytes, bytes]:
    """The Parquet schema metadata of a GeoParquet file whose footprints cover ``bbox``."""
    return {b"geo": json.dumps(geo_metadata(bbox)).encode()}


def file_bbox(schema: pa.Schema) -> list[float] | None:
    """The bbox a GeoParquet file's ``geo`` metadata gives (``None``: no geometry, or none georeferenced)."""
    geo = (schema.metadata or {}).get(b"geo")
    return json.loads(geo)["columns"]["geometry"].get("bbox") if geo else None


def scene_rows(
    row_ids: list[int], scenes: list[str], windows: list[tuple[int, int, int, int]], footprints: list
) -> pa.Table:
    """The rows of a scene index: ``row_id``, ``scene``, the pixel window (``col_off, row_off, width,
    height``), the footprint (``geometry``, WKB) and its ``bbox``, as GeoParquet."""
    columns = list(zip(*windows, strict=True)) if windows else [[], [], [], []]
    boxes = [None if ring is None else ring_bbox(ring) for ring in footprints]
    table = pa.table(
        {
            "row_id": pa.array(row_ids, pa.int64()),
            "scene": pa.array(scenes, pa.string()),
            **{
                name: pa.array(values, pa.int32())
                for name, values in zip(WINDOW_COLUMNS, columns, strict=True)
            },
            "geometry": pa.array(
                [None if ring is None else polygon_wkb(ring) for ring in footprints], pa.binary()
            ),
            "bbox": pa.array(boxes, BBOX_TYPE),
        }
    )
    known = [[box["xmin"], box["ymin"], box["xmax"], box["ymax"]] for box in boxes if box is not None]
    return table.replace_schema_metadata(geo_schema_metadata(union_bbox(known)))


def image_rows(row_ids: list[int], files: list[str]) -> pa.Table:
    """The rows of an image index: ``row_id`` and ``file`` (relative to the indexed folder)."""
    return pa.table({"row_id": pa.array(row_ids, pa.int64()), "file": pa.array(files, pa.string())})


WINDOW_COLUMNS = ("col_off", "row_off", "width", "height")
