"""Textured synthetic aerial scenes: fields, roads and buildings drawn at random (seeded) with sensor
noise, for what needs the texture real imagery has (local features: the audit's visual words and its
geometric verification). The demo's :mod:`~rsitr_hf.demo.synthetic` scenes are flat colour fields with a
few objects, too plain for local features.

Fields are ploughed in rows (furrows) except in the ``bare`` kind, whose flat fields carry nothing but
sensor noise: a nearly textureless case. Every seed of a kind is a different place drawn the same way (a
look-alike of every other seed of that kind); a large scene cut into tiles gives images that overlap as
tiles of one area do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageDraw


@dataclass(frozen=True)
class SceneKind:
    """How a kind of place is drawn, at 768 px (counts scale with the area of the scene)."""

    fields: int
    field_size: tuple[int, int]
    roads: int
    buildings: int
    building_size: tuple[int, int]
    furrows: bool = True  # fields ploughed or planted in rows (False: flat fields, nearly textureless)


SCENE_KINDS = {
    "suburban": SceneKind(40, (40, 200), 8, 300, (6, 16)),
    "farmland": SceneKind(60, (60, 260), 3, 40, (6, 14)),
    "dense": SceneKind(15, (40, 160), 12, 700, (6, 20)),
    "bare": SceneKind(60, (60, 260), 3, 40, (6, 14), furrows=False),
}
KINDS = ("suburban", "farmland", "dense")  # drawn in turn; "bare" is the hard case, asked for by name
FIELD_COLOURS = ((70, 110, 50), (120, 140, 70), (150, 120, 80), (100, 90, 60), (60, 90, 40))
REFERENCE_SIZE = 768


def aerial_scene(seed: int, size: int = REFERENCE_SIZE, kind: str = "suburban") -> PIL.Image.Image:
    """The scene ``seed`` of ``kind`` (:data:`SCENE_KINDS`), ``size`` pixels square."""
    drawn = SCENE_KINDS[kind]
    density = (size / REFERENCE_SIZE) ** 2
    rng = np.random.default_rng(seed)
    image = PIL.Image.new("RGB", (size, size), (96, 112, 72))
    draw = PIL.ImageDraw.Draw(image)
    for _ in range(max(1, round(drawn.fields * density))):
        x, y = rng.integers(0, size, 2)
        width, height = rng.integers(*drawn.field_size, 2)
        colour = FIELD_COLOURS[rng.integers(len(FIELD_COLOURS))]
        draw.rectangle([x, y, x + width, y + height], fill=colour)
        if drawn.furrows:
            draw_furrows(draw, (x, y, x + width, y + height), colour, rng)
    for _ in range(max(1, round(drawn.roads * size / REFERENCE_SIZE))):
        draw.line(list(rng.integers(0, size, 4)), fill=(128, 128, 128), width=6)
    for _ in range(round(drawn.buildings * density)):
        x, y = rng.integers(0, size, 2)
        width, height = rng.integers(*drawn.building_size, 2)
        draw.rectangle([x, y, x + width, y + height], fill=tuple(int(v) for v in rng.integers(120, 230, 3)))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, (size, size, 3))
    return PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_furrows(
    draw: PIL.ImageDraw.ImageDraw, box: tuple[int, int, int, int], colour: tuple, rng: np.random.Generator
) -> None:
    """Rows across a field, along or across it, a few pixels apart and a little darker than the field."""
    left, top, right, bottom = box
    spacing = int(rng.integers(4, 9))
    darker = tuple(max(0, value - int(rng.integers(12, 30))) for value in colour)
    if rng.integers(2):
        for x in range(left, right, spacing):
            draw.line([x, top, x, bottom], fill=darker, width=2)
    else:
        for y in range(top, bottom, spacing):
            draw.line([left, y, right, y], fill=darker, width=2)
