"""Edited copies of synthetic scenes, to plant among look-alikes: what ``rsitr-audit`` must find
(``benchmarks/bench_audit.py`` and the tests).

A place is a textured aerial scene (:mod:`rsitr_hf.demo.textured`) of :data:`PLACE` pixels; the training
image is its window of :data:`SIZE` pixels at :data:`ORIGIN`; each of :data:`EDITS` makes a copy from the
place's windows: the training image edited as a whole (re-encoded, resized, jittered, rotated, flipped),
shifted, cropped (and resized back), a neighbouring tile overlapping it, a larger window reduced (a change
of scale and a crop at once), and combinations.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import PIL.Image
import PIL.ImageEnhance

from .synthetic import make_example
from .textured import KINDS, aerial_scene

SIZE = 256
PLACE = 640
ORIGIN = 128  # where a training image lies in its place
Window = Callable[[int, int, int], PIL.Image.Image]  # (left, top, side) of the place -> image


def jpeg(image: PIL.Image.Image, quality: int = 70) -> PIL.Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return PIL.Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def jitter(image: PIL.Image.Image) -> PIL.Image.Image:
    brighter = PIL.ImageEnhance.Brightness(PIL.ImageEnhance.Color(image).enhance(1.3)).enhance(1.15)
    return PIL.ImageEnhance.Contrast(brighter).enhance(0.85)


def rotate(image: PIL.Image.Image, quarter_turns: int) -> PIL.Image.Image:
    turns = (
        None,
        PIL.Image.Transpose.ROTATE_90,
        PIL.Image.Transpose.ROTATE_180,
        PIL.Image.Transpose.ROTATE_270,
    )
    return image.transpose(turns[quarter_turns % 4])


def flip(image: PIL.Image.Image) -> PIL.Image.Image:
    return image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)


def shifted(pixels: int) -> Callable[[Window], PIL.Image.Image]:
    """The training image's window moved ``pixels`` right and down."""
    return lambda window: window(ORIGIN + pixels, ORIGIN + pixels, SIZE)


def cropped(share: float) -> Callable[[Window], PIL.Image.Image]:
    """A crop keeping ``1 - share`` of the training image's area (off its top-left corner), resized back."""
    side = round(SIZE * (1 - share) ** 0.5)
    offset = (SIZE - side) // 2
    return lambda window: window(ORIGIN + offset * 2, ORIGIN + offset, side).resize((SIZE, SIZE))


def tile(overlap: float) -> Callable[[Window], PIL.Image.Image]:
    """The neighbouring tile that overlaps the training image by ``overlap`` of its area."""
    return lambda window: window(ORIGIN + round(SIZE * (1 - overlap)), ORIGIN, SIZE)


def zoomed_out(share: float) -> Callable[[Window], PIL.Image.Image]:
    """A larger window, its area ``1 / share`` of the training image's, reduced to the image size (the
    training image is ``share`` of the copy: a change of scale and a crop at once)."""
    side = round(SIZE / share**0.5)
    return lambda window: window(ORIGIN - (side - SIZE) // 3, ORIGIN - (side - SIZE) // 2, side).resize(
        (SIZE, SIZE)
    )


def whole(edit: Callable[[PIL.Image.Image], PIL.Image.Image]) -> Callable[[Window], PIL.Image.Image]:
    return lambda window: edit(window(ORIGIN, ORIGIN, SIZE))


EDITS: dict[str, Callable[[Window], PIL.Image.Image]] = {
    "copy (other format)": whole(lambda image: image),
    "JPEG quality 70": whole(jpeg),
    "resize to 75 %": whole(lambda image: image.resize((SIZE * 3 // 4, SIZE * 3 // 4))),
    "colour jitter": whole(jitter),
    "rotate 90": whole(lambda image: rotate(image, 1)),
    "flip": whole(flip),
    "rotate + jitter + JPEG": whole(lambda image: jpeg(jitter(rotate(image, 3)))),
    "shift 4 px": shifted(4),
    "shift 16 px": shifted(16),
    "shift 32 px": shifted(32),
    "shift 64 px": shifted(64),
    "crop 2 %": cropped(0.02),
    "crop 10 %": cropped(0.10),
    "crop 25 %": cropped(0.25),
    "crop 50 %": cropped(0.50),
    "tiles overlapping 75 %": tile(0.75),
    "tiles overlapping 50 %": tile(0.50),
    "tiles overlapping 25 %": tile(0.25),
    "zoomed out to 50 % (scale + crop)": zoomed_out(0.5),
    "crop 25 % at 75 % size": lambda window: cropped(0.25)(window).resize((SIZE * 3 // 4, SIZE * 3 // 4)),
    "shift 32 px + jitter + JPEG": lambda window: jpeg(jitter(shifted(32)(window))),
    "crop 25 % + rotate 90 + JPEG": lambda window: jpeg(rotate(cropped(0.25)(window), 1)),
    "tiles 50 % + flip": lambda window: flip(tile(0.5)(window)),
}
GLOBAL_EDITS = list(EDITS)[:7]  # what a flat scene can show (no place around it)


def place(index: int, scenes: str, size: int = PLACE, kinds: Sequence[str] = KINDS) -> Window:
    """The windows of place ``index``: crops of its textured scene of ``size`` px (``kinds`` in turn), or
    for ``flat`` the demo scene itself (whatever the window)."""
    if scenes == "flat":
        image = make_example(0, "train", index, image_size=SIZE)[0]
        return lambda left, top, side: image
    scene = aerial_scene(index, size, kinds[index % len(kinds)])
    return lambda left, top, side: scene.crop((left, top, left + side, top + side))


def stored_or_window(window: Window, stored: Path) -> Window:
    """``window``, except that the training image's own window is the training image as stored (decoded
    JPEG), so that a copy of it keeps its pixels."""

    def shown(left: int, top: int, side: int) -> PIL.Image.Image:
        if (left, top, side) == (ORIGIN, ORIGIN, SIZE):
            with PIL.Image.open(stored) as image:
                return image.convert("RGB")
        return window(left, top, side)

    return shown
