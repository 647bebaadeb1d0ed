"""Reading remote sensing images as 8-bit RGB.

Aerial imagery often comes as single-channel or 16-bit TIFF. PIL's ``convert("RGB")`` clips 16-bit
values at 255 (a 12-bit image turns almost white), so high bit-depth images are rescaled linearly
from ``[0, max]`` to ``[0, 255]`` before conversion.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image

from ..utils.errors import InputError, first_line

HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})  # image files by name


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL image (RGB, RGBA, L, P, 16-bit, 32-bit integer or float) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in HIGH_BIT_DEPTH_MODES:
        array = np.asarray(image, dtype=np.float64)
        low, high = min(float(array.min()), 0.0), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        image = PIL.Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return image.convert("RGB")


def needs_rescaling(path: str | Path) -> bool:
    """True when the image at ``path`` has a bit depth that ``convert("RGB")`` would clip.

    Only the header is read. Raises ``PIL.UnidentifiedImageError`` or ``OSError`` when the file is not
    an image PIL can open.
    """
    with PIL.Image.open(path) as image:
        return image.mode in HIGH_BIT_DEPTH_MODES


def rgb_png_bytes(path: str | Path) -> bytes:
    """Decode the image at ``path``, convert it with :func:`to_rgb` and return it PNG-encoded."""
    with PIL.Image.open(path) as image:
        rgb = to_rgb(image)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_fully(path: str | Path) -> None:
    """Decode every pixel of the image at ``path``; raise if any part of it is unreadable."""
    with PIL.Image.open(path) as image:
        image.load()


class UnreadableImageError(InputError, ValueError):
    """An image file that cannot be opened or decoded."""


def read_rgb(path: str | Path) -> PIL.Image.Image:
    """The image at ``path`` as 8-bit RGB (:func:`to_rgb`), decoded before the file closes; an
    :class:`UnreadableImageError` naming the file when it is not a readable image."""
    try:
        with PIL.Image.open(path) as image:
            rgb = to_rgb(image)
            rgb.load()
            return rgb
    # PIL's UnidentifiedImageError is an OSError
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"{path}: not a readable image ({first_line(error)})") from None
