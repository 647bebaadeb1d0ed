"""Large scenes (GeoTIFF and plain large images) as tiles: windows, window-by-window reads, footprints.

A scene is read with rasterio (GDAL), one window at a time: a scene larger than memory is never loaded
whole. It is cut into square windows of ``tile`` pixels every ``stride`` pixels (or metres, for a scene in a
projected CRS measured in metres), the last row and column moved in to end at the scene's edge, so every
pixel is covered. Each window is read as 8-bit RGB the way :func:`rsitr_hf.data.images.to_rgb` reads an image:

- **bands**: the bands whose colour interpretation is red, green and blue, else bands 1, 2, 3, else band 1
  as grey (``Tiling.bands`` / ``--bands 4,3,2`` overrides, 1-based, one or three bands);
- **bit depth**: 8-bit values are used as they are; other types are scaled linearly from ``[min(0, low),
  high]`` to ``[0, 255]``, ``low``/``high`` being the extremes of the scene's chosen bands (valid pixels only)
  in a reduced read of at most ``SCALE_READ_SIDE`` pixels on the longer side, one scale for the whole scene
  so that tiles compare (values above it clip);
- **nodata**: pixels that the scene masks (its nodata value, alpha band or internal mask) are black; a
  window with no valid pixel is skipped (not indexed).

A window's footprint is its four corners through the scene's geotransform, then from the scene's CRS to
WGS84 (longitude, latitude; ``rasterio.warp.transform``), as a closed counter-clockwise ring. Needs
rasterio (``pip install "rsitr_hf[scenes]"``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from ..utils.errors import InputError, first_line
from ..utils.files import FileFingerprint
from ..utils.optional import require

TILE_UNITS = ("pixels", "metres")
SCALE_READ_SIDE = 1024  # the reduced read that finds a high-bit-depth scene's value range
OVERVIEW_SIDE = 1024  # the longer side of an overview image (rsitr-app)


def require_rasterio():
    return require("rasterio", "indexing scenes", "rasterio", "scenes")


@dataclass(frozen=True)
class Tiling:
    """How scenes are cut: square windows of ``tile`` every ``stride`` (both in ``unit``: pixels, or metres
    for scenes in a projected CRS measured in metres), reading ``bands`` (1-based; ``None``: the default
    choice, see the module)."""

    tile: float = 224
    stride: float = 112
    unit: str = "pixels"
    bands: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.unit not in TILE_UNITS:
            raise InputError(f"tile unit: expected one of {', '.join(TILE_UNITS)}, got {self.unit!r}")
        if not (self.tile > 0 and self.stride > 0):
            raise InputError(f"--tile and --stride must be positive, got {self.tile:g} and {self.stride:g}")
        if self.bands is not None and (len(self.bands) not in (1, 3) or min(self.bands) < 1):
            raise InputError(f"--bands: expected one or three band numbers from 1, got {list(self.bands)}")

    def to_dict(self) -> dict:
        return {**asdict(self), "bands": None if self.bands is None else list(self.bands)}

    @classmethod
    def from_dict(cls, values: dict) -> Tiling:
        bands = values.get("bands")
        return cls(values["tile"], values["stride"], values["unit"], None if bands is None else tuple(bands))


Window = tuple[int, int, int, int]  # column offset, row offset, width, height (pixels)


@dataclass
class SceneInfo:
    """What indexing and searching need to know of one scene: its size in pixels, the bands read as RGB
    (1-based; one band: grey), the value range scaled to 0-255 (``None``: 8-bit, used as it is), its CRS (WKT)
    and geotransform (``a, b, c, d, e, f``: pixel (col, row) -> ``(a*col + b*row + c, d*col + e*row + f)``),
    ``None`` when it is not georeferenced, its window size and step in pixels, and the ``fingerprint`` of
    its file when it was described (how a scene that changed since is noticed)."""

    width: int
    height: int
    bands: list[int]
    scale: list[float] | None
    crs: str | None
    transform: list[float] | None
    tile: list[int]
    stride: list[int]
    fingerprint: FileFingerprint

    @classmethod
    def from_dict(cls, values: dict) -> SceneInfo:
        """The inverse of ``dataclasses.asdict``."""
        return cls(**{**values, "fingerprint": FileFingerprint(**values["fingerprint"])})

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None

    def windows(self) -> list[Window]:
        """Every window, row by row: ``tile`` wide every ``stride``, the last ones ending at the edge."""
        columns = window_starts(self.width, self.tile[0], self.stride[0])
        rows = window_starts(self.height, self.tile[1], self.stride[1])
        width, height = min(self.tile[0], self.width), min(self.tile[1], self.height)
        return [(column, row, width, height) for row in rows for column in columns]

    def footprint(self, window: Window) -> list[list[float]] | None:
        """The window's corners in WGS84 as a closed counter-clockwise ring of ``[longitude, latitude]``
        (``None`` for a scene without georeference)."""
        return self.footprints([window])[0]

    def footprints(self, windows: list[Window]) -> list[list[list[float]] | None]:
        """:meth:`footprint` of each of ``windows``, transformed in one call."""
        if not self.georeferenced:
            return [None] * len(windows)
        if not windows:
            return []
        from rasterio.crs import CRS
        from rasterio.warp import transform

        a, b, c, d, e, f = self.transform
        corners = [
            corner
            for column, row, width, height in windows
            for corner in (
                (column, row),
                (column + width, row),
                (column + width, row + height),
                (column, row + height),
            )
        ]
        xs = [a * x + b * y + c for x, y in corners]
        ys = [d * x + e * y + f for x, y in corners]
        longitudes, latitudes = transform(CRS.from_wkt(self.crs), CRS.from_epsg(4326), xs, ys)
        rings = []
        for start in range(0, len(corners), 4):
            ring = [[float(longitudes[i]), float(latitudes[i])] for i in range(start, start + 4)]
            if signed_area(ring) < 0:
                ring.reverse()
            rings.append(ring + [ring[0]])
        return rings


def window_starts(size: int, tile: int, stride: int) -> list[int]:
    """Offsets along one axis: ``0, stride, ...`` and one ending at ``size`` when they fall short of it."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    return starts if starts[-1] + tile == size else [*starts, size - tile]


def signed_area(ring: list[list[float]]) -> float:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1], strict=True)) / 2


def window_iou(first: Window, second: Window) -> float:
    """Intersection over union of two pixel windows."""
    width = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    height = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    overlap = max(0, width) * max(0, height)
    return overlap / (first[2] * first[3] + second[2] * second[3] - overlap)


def open_scene(path: Path):
    """The rasterio dataset at ``path``; an :class:`InputError` naming it when it is not a readable raster."""
    rasterio = require_rasterio()
    try:
        with warnings.catch_warnings():  # a plain image has no georeference, which is fine here
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        raise InputError(f"{path}: not a readable scene ({error})") from None


def describe_scene(path: Path, tiling: Tiling) -> SceneInfo:
    """Read the header of the scene at ``path`` (and, for high bit depths, a reduced image for its value
    range) and say how it is tiled; an :class:`InputError` naming the scene when the tiling cannot apply."""
    fingerprint = FileFingerprint.of(path)
    with open_scene(path) as scene:
        bands = list(tiling.bands) if tiling.bands is not None else default_bands(scene)
        if max(bands) > scene.count:
            raise InputError(
                f"{path}: --bands {','.join(map(str, bands))}, but the scene has {scene.count} band(s)"
            )
        georeferenced = scene.crs is not None and not scene.transform.is_identity
        tile, stride = window_size(path, scene, tiling, georeferenced)
        return SceneInfo(
            width=scene.width,
            height=scene.height,
            bands=bands,
            scale=None if scene.dtypes[bands[0] - 1] == "uint8" else value_range(scene, bands),
            crs=scene.crs.to_wkt() if georeferenced else None,
            transform=list(scene.transform)[:6] if georeferenced else None,
            tile=tile,
            stride=stride,
            fingerprint=fingerprint,
        )


def default_bands(scene) -> list[int]:
    from rasterio.enums import ColorInterp

    interpretation = list(scene.colorinterp)
    wanted = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(colour in interpretation for colour in wanted):
        return [interpretation.index(colour) + 1 for colour in wanted]
    return [1, 2, 3] if scene.count >= 3 else [1]


def window_size(path: Path, scene, tiling: Tiling, georeferenced: bool) -> tuple[list[int], list[int]]:
    """``tile`` and ``stride`` in pixels (x, y) for this scene."""
    if tiling.unit == "pixels":
        return [round(tiling.tile)] * 2, [max(1, round(tiling.stride))] * 2
    if not georeferenced or not scene.crs.is_projected or "metre" not in (scene.crs.linear_units or ""):
        raise InputError(
            f"{path}: --tile_unit metres needs a scene in a projected CRS measured in metres; this one is "
            f"{'not georeferenced' if not georeferenced else scene.crs.to_string()} (use --tile_unit pixels)"
        )
    resolution = (abs(scene.transform.a), abs(scene.transform.e))
    tile = [max(1, round(tiling.tile / size)) for size in resolution]
    return tile, [max(1, round(tiling.stride / size)) for size in resolution]


def reduced_read(scene, bands: list[int], side: int) -> np.ma.MaskedArray:
    """``(C, H, W)`` masked values of ``bands`` of the open ``scene``, read reduced to at most ``side``
    pixels on the longer side (GDAL resamples block by block: the scene is not loaded whole)."""
    factor = max(1.0, max(scene.width, scene.height) / side)
    shape = (len(bands), max(1, int(scene.height / factor)), max(1, int(scene.width / factor)))
    return read_pixels(scene, bands, out_shape=shape, masked=True)


def value_range(scene, bands: list[int]) -> list[float]:
    """``[min(0, low), high]`` of the valid pixels of ``bands`` in a read reduced to ``SCALE_READ_SIDE``."""
    values = reduced_read(scene, bands, SCALE_READ_SIDE).compressed()
    if values.size == 0:
        return [0.0, 0.0]
    return [min(0.0, float(values.min())), float(values.max())]


def to_rgb_array(values: np.ma.MaskedArray, info: SceneInfo) -> np.ndarray:
    """``(C, H, W)`` masked band values -> ``(H, W, 3)`` uint8, masked pixels black."""
    if info.scale is not None:
        low, high = info.scale
        scaled = np.zeros(values.shape) if high <= low else (values.astype(np.float64) - low) / (high - low)
        values = np.ma.array(np.round(np.clip(scaled, 0, 1) * 255), mask=np.ma.getmaskarray(values))
    pixels = np.ma.filled(values, 0).astype(np.uint8)
    pixels = np.repeat(pixels, 3, axis=0) if len(pixels) == 1 else pixels
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def read_pixels(scene, *args, **kwargs) -> np.ma.MaskedArray:
    """``scene.read(*args, **kwargs)``; an :class:`InputError` naming the scene when its pixels cannot be read
    (a file cut short, a damaged block): indexing stops there and the index stays as it was."""
    rasterio = require_rasterio()
    try:
        return scene.read(*args, **kwargs)
    except rasterio.errors.RasterioError as error:
        raise InputError(f"{scene.name}: its pixels cannot be read ({first_line(error)})") from None


def read_tile(scene, info: SceneInfo, window: Window) -> PIL.Image.Image | None:
    """The window of the open rasterio ``scene`` as RGB, or ``None`` when it holds no valid pixel."""
    from rasterio.windows import Window as RasterWindow

    values = read_pixels(scene, info.bands, window=RasterWindow(*window), masked=True)
    if np.ma.getmaskarray(values).all():
        return None
    return PIL.Image.fromarray(to_rgb_array(values, info))


def read_tiles(root: str, tiles: list[tuple[str, Window]], infos: dict[str, SceneInfo]) -> list:
    """The windows ``tiles`` (scene name under ``root``, window) as RGB images, ``None`` for nodata ones;
    each scene opened once per call."""
    images, opened = [], {}
    try:
        for name, window in tiles:
            if name not in opened:
                opened[name] = open_scene(Path(root) / name)
                check_size(opened[name], infos[name])
            images.append(read_tile(opened[name], infos[name], window))
    finally:
        for scene in opened.values():
            scene.close()
    return images


def check_size(scene, info: SceneInfo) -> None:
    """An :class:`InputError` naming the open ``scene`` when its size is no longer the one ``info`` gives:
    its windows would fall outside it."""
    if (scene.width, scene.height) != (info.width, info.height):
        raise InputError(
            f"{scene.name}: {scene.width} x {scene.height} pixels, {info.width} x {info.height} when "
            "indexed: it changed since (update the index with rsitr-search index --scenes)"
        )


def scene_overview(path: Path, info: SceneInfo) -> PIL.Image.Image:
    """The scene reduced to at most ``OVERVIEW_SIDE`` pixels on its longer side (one reduced read)."""
    with open_scene(path) as scene:
        check_size(scene, info)
        return PIL.Image.fromarray(to_rgb_array(reduced_read(scene, info.bands, OVERVIEW_SIDE), info))


def outline_windows(overview: PIL.Image.Image, info: SceneInfo, windows: list[tuple[str, Window]]):
    """A copy of ``overview`` (of a scene described by ``info``) with each ``(label, window)`` outlined and
    labelled."""
    image = overview.copy()
    draw = PIL.ImageDraw.Draw(image)
    factor = info.width / image.width
    line = max(2, math.ceil(image.width / 300))
    for label, (column, row, width, height) in windows:
        box = [column / factor, row / factor, (column + width) / factor - 1, (row + height) / factor - 1]
        draw.rectangle(box, outline=(255, 40, 40), width=line)
        draw.text((box[0] + line + 2, box[1] + line + 1), label, fill=(255, 255, 0))
    return image
