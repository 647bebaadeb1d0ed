"""Deterministic synthetic aerial scenes with 5 captions each, written in the seed layout.

Every scene is a :class:`Scene`: a land cover, an optional water body, roads, and a group of objects
of one kind (buildings, cars, planes, ships, storage tanks) with a count, colour, size and position.
Captions are generated from the same :class:`Scene` that is drawn, so they are determined by the
picture, and each caption names several attributes, so no single attribute solves retrieval.

Two domains share the concepts but differ in style, scene statistics and wording, so that a model
trained on one and adapted to the other shows transfer rather than memorisation:

- ``"source"``: bright natural colours, few large objects, plain wording ("planes", "cars");
- ``"target"``: a hazy, colour-shifted sensor look with noise, more and smaller objects, and the
  vocabulary of RS captioning datasets ("airplanes", "vehicles", "oil tanks").

Image ``i`` of a split depends only on ``(seed, split, i)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from ..utils.cli import command, command_parser, parse_arguments

LANDS = ("farmland", "desert", "forest", "grassland", "bare land")
WATERS = ("none", "river", "lake", "sea")
ROADS = ("none", "road", "crossroads")
KINDS = ("building", "car", "plane", "ship", "storage tank")
COLOURS = {
    "red": (200, 40, 40),
    "white": (240, 240, 240),
    "blue": (40, 70, 210),
    "yellow": (235, 205, 40),
    "black": (25, 25, 25),
}
POSITIONS = ("top", "bottom", "left", "right", "middle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
LAND_COLOURS = {
    "farmland": ((90, 150, 60), (190, 170, 80)),
    "desert": ((215, 190, 140), (200, 170, 120)),
    "forest": ((30, 85, 40), (50, 110, 45)),
    "grassland": ((130, 185, 90), (120, 175, 85)),
    "bare land": ((150, 140, 130), (135, 125, 118)),
}
POSITION_PHRASES = {
    "top": "on the top side",
    "bottom": "on the bottom side",
    "left": "on the left side",
    "right": "on the right side",
    "middle": "in the middle of the image",
}
ROAD_PHRASES = {"none": "no road", "road": "a straight road", "crossroads": "two crossing roads"}
NO_WATER = "no water"
SIZE_WORDS = {True: "large", False: "small"}
WATER_COLOUR = (40, 90, 150)
ROAD_COLOUR = (95, 95, 95)


@dataclass(frozen=True)
class DomainStyle:
    """How a domain looks and speaks.

    Attributes:
        haze: blend weight of a grey haze layer (0 = none).
        tint: RGB multipliers applied after drawing (sensor colour cast).
        noise: std of Gaussian pixel noise (0-255 scale).
        object_scale: object size relative to the image side.
        max_count: the largest object count drawn.
        nouns: (singular, plural) caption noun per object kind.
        land_words: caption phrase per land cover.
        water_words: caption phrase per water body.
    """

    haze: float
    tint: tuple[float, float, float]
    noise: float
    object_scale: float
    max_count: int
    nouns: dict
    land_words: dict
    water_words: dict


SOURCE = DomainStyle(
    haze=0.0,
    tint=(1.0, 1.0, 1.0),
    noise=2.0,
    object_scale=0.16,
    max_count=4,
    nouns={
        "building": ("building", "buildings"),
        "car": ("car", "cars"),
        "plane": ("plane", "planes"),
        "ship": ("ship", "ships"),
        "storage tank": ("tank", "tanks"),
    },
    land_words={
        "farmland": "farmland",
        "desert": "desert",
        "forest": "forest",
        "grassland": "grassland",
        "bare land": "bare land",
    },
    water_words={"river": "a river", "lake": "a lake", "sea": "the sea"},
)
TARGET = DomainStyle(
    haze=0.25,
    tint=(0.9, 1.0, 1.15),
    noise=8.0,
    object_scale=0.11,
    max_count=6,
    nouns={
        "building": ("house", "houses"),
        "car": ("vehicle", "vehicles"),
        "plane": ("airplane", "airplanes"),
        "ship": ("boat", "boats"),
        "storage tank": ("oil tank", "oil tanks"),
    },
    land_words={
        "farmland": "cultivated fields",
        "desert": "sandy desert",
        "forest": "dense forest",
        "grassland": "green meadow",
        "bare land": "bare ground",
    },
    water_words={"river": "a winding river", "lake": "a pond", "sea": "the ocean"},
)
DOMAINS = {"source": SOURCE, "target": TARGET}


@dataclass(frozen=True)
class Scene:
    """What one synthetic image shows."""

    land: str
    water: str
    road: str
    kind: str
    count: int
    colour: str
    large: bool
    position: str


def sample_scene(rng: np.random.Generator, style: DomainStyle) -> Scene:
    kind = KINDS[rng.integers(len(KINDS))]
    water = WATERS[rng.integers(len(WATERS))]
    if kind == "ship" and water == "none":
        water = ("river", "lake", "sea")[rng.integers(3)]
    return Scene(
        land=LANDS[rng.integers(len(LANDS))],
        water=water,
        road=ROADS[rng.integers(len(ROADS))],
        kind=kind,
        count=int(rng.integers(1, style.max_count + 1)),
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        large=bool(rng.integers(2)),
        position=POSITIONS[rng.integers(len(POSITIONS))],
    )


def region_of(position: str, size: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the part of the image that holds the objects."""
    third = size / 3
    return {
        "top": (0.1 * size, 0.05 * size, 0.9 * size, third),
        "bottom": (0.1 * size, 2 * third, 0.9 * size, 0.95 * size),
        "left": (0.05 * size, 0.1 * size, third, 0.9 * size),
        "right": (2 * third, 0.1 * size, 0.95 * size, 0.9 * size),
        "middle": (third, third, 2 * third, 2 * third),
    }[position]


def draw_land(draw: PIL.ImageDraw.ImageDraw, rng: np.random.Generator, land: str, size: int) -> None:
    base, alternate = LAND_COLOURS[land]
    draw.rectangle((0, 0, size, size), fill=base)
    if land == "farmland":
        step = max(size // 6, 2)
        for index, x in enumerate(range(0, size, step)):
            if index % 2:
                draw.rectangle((x, 0, x + step - 1, size), fill=alternate)
    else:
        for _ in range(12):
            x, y = rng.uniform(0, size, 2)
            r = rng.uniform(0.03, 0.1) * size
            draw.ellipse((x - r, y - r, x + r, y + r), fill=alternate)


def draw_water(draw: PIL.ImageDraw.ImageDraw, rng: np.random.Generator, water: str, size: int) -> None:
    if water == "river":
        width = 0.12 * size
        phase, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.12) * size
        points = [(x, size / 2 + amplitude * np.sin(phase + 6 * x / size)) for x in np.linspace(0, size, 24)]
        draw.line(points, fill=WATER_COLOUR, width=int(width))
    elif water == "lake":
        cx, cy = rng.uniform(0.35, 0.65, 2) * size
        rx, ry = rng.uniform(0.15, 0.25, 2) * size
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=WATER_COLOUR)
    elif water == "sea":
        draw.rectangle((0, 0.7 * size, size, size), fill=WATER_COLOUR)


def draw_roads(draw: PIL.ImageDraw.ImageDraw, road: str, size: int) -> None:
    width = max(int(0.05 * size), 1)
    if road in ("road", "crossroads"):
        draw.line((0, 0.45 * size, size, 0.45 * size), fill=ROAD_COLOUR, width=width)
    if road == "crossroads":
        draw.line((0.55 * size, 0, 0.55 * size, size), fill=ROAD_COLOUR, width=width)


def draw_object(
    draw: PIL.ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float, colour: tuple
) -> None:
    outline = tuple(int(c * 0.5) for c in colour)
    if kind == "building":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour, outline=outline)
    elif kind == "car":
        draw.rectangle((x - r, y - r / 2, x + r, y + r / 2), fill=colour)
    elif kind == "plane":
        draw.rectangle((x - r / 5, y - r, x + r / 5, y + r), fill=colour)
        draw.rectangle((x - r, y - r / 5, x + r, y + r / 5), fill=colour)
        draw.rectangle((x - r / 2, y + 0.6 * r, x + r / 2, y + 0.8 * r), fill=colour)
    elif kind == "ship":
        draw.polygon(
            [
                (x - r, y - r / 3),
                (x + 0.6 * r, y - r / 3),
                (x + r, y),
                (x + 0.6 * r, y + r / 3),
                (x - r, y + r / 3),
            ],
            fill=colour,
        )
    elif kind == "storage tank":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=outline)
        draw.ellipse((x - r / 2, y - r / 2, x + r / 2, y + r / 2), outline=outline)


def render(scene: Scene, rng: np.random.Generator, style: DomainStyle, size: int) -> PIL.Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image in the domain's style."""
    image = PIL.Image.new("RGB", (size, size))
    draw = PIL.ImageDraw.Draw(image)
    draw_land(draw, rng, scene.land, size)
    draw_water(draw, rng, scene.water, size)
    draw_roads(draw, scene.road, size)
    radius = style.object_scale * size * (1.0 if scene.large else 0.55) / 2
    x0, y0, x1, y1 = region_of(scene.position, size)
    columns = int(np.ceil(np.sqrt(scene.count)))
    rows = int(np.ceil(scene.count / columns))
    for index in range(scene.count):
        row, column = divmod(index, columns)
        x = x0 + (column + 0.5) * (x1 - x0) / columns + rng.uniform(-0.1, 0.1) * radius
        y = y0 + (row + 0.5) * (y1 - y0) / rows + rng.uniform(-0.1, 0.1) * radius
        draw_object(draw, scene.kind, x, y, max(radius, 1.0), COLOURS[scene.colour])
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels * (1 - style.haze) + 170.0 * style.haze
    pixels = pixels * np.asarray(style.tint, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, style.noise, pixels.shape)
    return PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def caption_phrases(scene: Scene, style: DomainStyle) -> dict:
    singular, plural = style.nouns[scene.kind]
    noun = singular if scene.count == 1 else plural
    return {
        "n": NUMBER_WORDS[scene.count],
        "noun": noun,
        "be": "is" if scene.count == 1 else "are",
        "colour": scene.colour,
        "size": SIZE_WORDS[scene.large],
        "pos": POSITION_PHRASES[scene.position],
        "land": style.land_words[scene.land],
        "water": style.water_words.get(scene.water, NO_WATER),
        "road": ROAD_PHRASES[scene.road],
    }


TEMPLATES = (
    "{n} {colour} {noun} {be} {pos} .",
    "there {be} {n} {size} {colour} {noun} in the {land} .",
    "{n} {noun} {be} located {pos} in an area of {land} .",
    "an area of {land} with {water} and {road} .",
    "{water} and {road} cross the {land} near {n} {noun} .",
    "we can see {n} {size} {noun} {pos} with {road} .",
    "{n} {colour} {noun} {be} near {water} in the {land} .",
    "this scene of {land} contains {n} {size} {colour} {noun} and {road} .",
)


def describe(scene: Scene, rng: np.random.Generator, style: DomainStyle) -> list[str]:
    """Five distinct captions of ``scene``, each naming several of its attributes."""
    phrases = caption_phrases(scene, style)
    chosen = rng.choice(len(TEMPLATES), size=5, replace=False)
    return [TEMPLATES[index].format(**phrases) for index in chosen]


def make_example(seed: int, split: str, index: int, domain: str = "target", image_size: int = 64):
    """The (image, captions, scene) of image ``index`` of ``split``; depends only on the arguments."""
    style = DOMAINS[domain]
    rng = np.random.default_rng([seed, SPLIT_KEYS[split], index, DOMAIN_KEYS[domain]])
    scene = sample_scene(rng, style)
    image = render(scene, rng, style, image_size)
    return image, describe(scene, rng, style), scene


SPLIT_KEYS = {"train": 0, "test": 1}
DOMAIN_KEYS = {"source": 0, "target": 1}


def write_seed_layout(
    root: str | os.PathLike,
    name: str = "synthrs",
    num_train: int = 400,
    num_test: int = 100,
    seed: int = 0,
    domain: str = "target",
    image_size: int = 64,
    image_format: str = "tif",
) -> Path:
    """Generate a dataset in the seed layout under ``root/<name>_precomp`` and return that folder.

    ``train_filename.txt`` has one line per image and ``test_filename.txt`` one per caption, as in the
    published files. Existing files are overwritten.
    """
    data_dir = Path(root) / f"{name}_precomp"
    images_dir = data_dir / f"{name}_images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("test", num_test)):
        captions, filenames = [], []
        for index in range(count):
            image, image_captions, _ = make_example(seed, split, index, domain, image_size)
            filename = f"{split}_{index:05d}.{image_format}"
            image.save(images_dir / filename)
            captions.extend(image_captions)
            filenames.extend([filename] * (5 if split == "test" else 1))
        (data_dir / f"{split}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        (data_dir / f"{split}_filename.txt").write_text("\n".join(filenames) + "\n", encoding="utf-8")
    return data_dir


def vocabulary() -> list[str]:
    """Every word any domain's captions can use, sorted (for building small tokenizers)."""
    phrases = [
        *TEMPLATES,
        *NUMBER_WORDS,
        *COLOURS,
        *SIZE_WORDS.values(),
        *POSITION_PHRASES.values(),
        *ROAD_PHRASES.values(),
        NO_WATER,
        "is are",
    ]
    for style in DOMAINS.values():
        phrases += [f"{singular} {plural}" for singular, plural in style.nouns.values()]
        phrases += [*style.land_words.values(), *style.water_words.values()]
    return sorted({word for phrase in phrases for word in phrase.split() if not word.startswith("{")})


@command
def main(argv: list[str] | None = None) -> None:
    parser = command_parser("Write a synthetic RS-like dataset in the seed layout.")
    parser.add_argument("root", help="the folder that receives <name>_precomp/")
    parser.add_argument("--name", default="synthrs", help="dataset name")
    parser.add_argument("--train", type=int, default=400, help="training images (5 captions each)")
    parser.add_argument("--test", type=int, default=100, help="test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of scenes and captions")
    parser.add_argument(
        "--domain", choices=sorted(DOMAINS), default="target", help="image style (source or target domain)"
    )
    parser.add_argument("--image_size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--format", default="tif", choices=("tif", "png", "jpg"), help="image file format")
    args = parse_arguments(parser, argv)
    path = write_seed_layout(
        args.root, args.name, args.train, args.test, args.seed, args.domain, args.image_size, args.format
    )
    print(path)


if __name__ == "__main__":
    main()
