"""Spatial filters for a scene index: an area in WGS84 (``--bbox minlon,minlat,maxlon,maxlat``, or the
polygons of a GeoJSON file, ``--within``) and the rows whose footprint intersects it.

The rows are found without reading every row: a shard whose bbox (its rows table's GeoParquet metadata)
misses the area is skipped; in the others, the rows' ``bbox`` covering column is compared with the area's
bounds (vectorised), and only the rows that pass have their footprint tested exactly against the area
(shapely). Rows of scenes without georeference have no footprint and never match. Needs shapely
(``pip install "rsitr_hf[scenes]"``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..utils.errors import InputError
from ..utils.optional import require
from .store import Shard


def require_shapely():
    return require("shapely", "spatial filters", "shapely", "scenes")


@dataclass
class Area:
    """A WGS84 area (a shapely geometry, longitude then latitude), its bounds and how it was given."""

    geometry: object
    bounds: tuple[float, float, float, float]
    description: str


def bbox_area(text: str) -> Area:
    """``"minlon,minlat,maxlon,maxlat"`` as an area; an :class:`InputError` naming ``--bbox`` otherwise."""
    shapely = require_shapely()
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise InputError(f"--bbox: expected minlon,minlat,maxlon,maxlat (four numbers), got {text!r}")
    west, south, east, north = values
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise InputError(
            f"--bbox: expected -180 <= minlon < maxlon <= 180 and -90 <= minlat < maxlat <= 90, got {text!r}"
        )
    return Area(shapely.box(west, south, east, north), (west, south, east, north), f"bbox {text}")


def geojson_area(path: str | os.PathLike) -> Area:
    """The union of the polygons of a GeoJSON file (a FeatureCollection, a Feature or a bare geometry, in
    WGS84 as RFC 7946 has it); an :class:`InputError` naming the file when it holds none."""
    shapely = require_shapely()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        features = data["features"] if data.get("type") == "FeatureCollection" else [data]
        shapes = [
            shapely.geometry.shape(feature["geometry"] if feature.get("type") == "Feature" else feature)
            for feature in features
        ]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a GeoJSON file of polygons ({error})") from None
    except (ValueError, shapely.errors.GEOSException) as error:
        raise InputError(f"{path}: a geometry cannot be read ({error})") from None
    polygons = [shape for shape in shapes if shape.geom_type in ("Polygon", "MultiPolygon")]
    if not polygons:
        raise InputError(f"{path}: no Polygon or MultiPolygon geometry (an area to search within)")
    area = shapely.union_all(polygons)
    return Area(area, tuple(area.bounds), f"within {path}")


def rows_in(shards: list[Shard], area: Area) -> np.ndarray:
    """The live row ids of ``shards`` whose footprint intersects ``area``, increasing."""
    shapely = require_shapely()
    west, south, east, north = area.bounds
    found = []
    for shard in shards:
        box = shard.bbox()  # read once per opened shard, not per query
        if box is None or box[0] > east or box[2] < west or box[1] > north or box[3] < south:
            continue
        rows = shard.rows()
        bbox = rows["bbox"]
        near = pc.and_(
            pc.and_(
                pc.less_equal(pc.struct_field(bbox, "xmin"), east),
                pc.greater_equal(pc.struct_field(bbox, "xmax"), west),
            ),
            pc.and_(
                pc.less_equal(pc.struct_field(bbox, "ymin"), north),
                pc.greater_equal(pc.struct_field(bbox, "ymax"), south),
            ),
        )
        near = pc.fill_null(near, False).to_numpy(zero_copy_only=False)
        if shard.dead() is not None:
            near &= ~shard.dead()
        positions = np.flatnonzero(near)
        if not len(positions):
            continue
        footprints = shapely.from_wkb(
            rows["geometry"].take(pa.array(positions)).to_numpy(zero_copy_only=False)
        )
        inside = positions[shapely.intersects(footprints, area.geometry)]
        found.append(shard.ids()[inside])
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)
