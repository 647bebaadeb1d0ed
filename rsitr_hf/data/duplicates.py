"""Duplicates within and across the splits of RSITR datasets: what ``rsitr-audit`` finds.

Three kinds of evidence, each named in the report:

- ``exact``: the same decoded pixels (SHA-256 of the RGB array and its shape), whatever the file format;
- ``perceptual``: a 256-bit DCT hash (``imagehash.phash``, ``hash_size=16``) of the greyscale image
  reduced to 128 px, compared under the 8 rotations and flips of the square; two images are near
  duplicates when the smallest Hamming distance is at most ``max_distance`` (default
  :data:`PERCEPTUAL_MAX_DISTANCE`). It survives re-encoding, resizing, colour changes, 90° rotations and
  flips, not crops or shifts of more than a few pixels;
- ``caption``: the same caption after normalisation (lower case, every character that is not a letter or a
  digit a space; :func:`rsitr_hf.data.pos.normalise_caption`, ``"words"``), counted per pair of splits.

Images are read from the seed layout (``<name>_precomp``: ``train``/``test`` captions and file names,
``<name>_images/``); a dataset whose image folder is absent (the packaged split files) is audited by its
captions only.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
import PIL.Image

from ..utils.errors import InputError
from .images import UnreadableImageError, read_rgb
from .pos import normalise_caption
from .seed_layout import SPLITS, RSITRDataError, infer_name, read_split_listing

HASH_SIZE = 16  # 256 bits
REDUCED_SIZE = 128
PERCEPTUAL_MAX_DISTANCE = 24
DIHEDRAL = {
    "none": None,
    "rotate_90": PIL.Image.Transpose.ROTATE_90,
    "rotate_180": PIL.Image.Transpose.ROTATE_180,
    "rotate_270": PIL.Image.Transpose.ROTATE_270,
    "flip_left_right": PIL.Image.Transpose.FLIP_LEFT_RIGHT,
    "flip_top_bottom": PIL.Image.Transpose.FLIP_TOP_BOTTOM,
    "transpose": PIL.Image.Transpose.TRANSPOSE,
    "transverse": PIL.Image.Transpose.TRANSVERSE,
}


@dataclass(frozen=True)
class AuditImage:
    """One image of a split: where it is and its captions."""

    dataset: str
    split: str
    file_name: str
    path: Path
    captions: tuple[str, ...]

    @property
    def group(self) -> str:
        return f"{self.dataset}/{self.split}"


@dataclass
class Fingerprints:
    """What the image methods compare, one row per readable image: ``pixels`` the SHA-256 of the pixels,
    ``hashes`` ``(N, 8, 4)`` uint64, the perceptual hash of each image under each of :data:`DIHEDRAL`."""

    images: list[AuditImage]
    pixels: list[str]
    hashes: np.ndarray
    unreadable: list[AuditImage] = field(default_factory=list)


@dataclass(frozen=True)
class ImagePair:
    """Two images found to be the same: ``a`` comes first in the audited order; ``evidence`` maps each
    method that found them to its score (``exact``: 0; ``perceptual``: the Hamming distance)."""

    a: AuditImage
    b: AuditImage
    evidence: dict[str, float]
    transform: str | None = None  # the rotation or flip of ``b`` that matches ``a`` (perceptual)


@dataclass(frozen=True)
class CaptionOverlap:
    """Normalised captions that two splits share: how many distinct ones, and how many images of each
    split carry at least one of them (within one split: captions that several of its images carry)."""

    a: str
    b: str
    shared_captions: int
    images_a: int
    images_b: int


def read_images(data_dir: str | Path, name: str | None = None) -> tuple[list[AuditImage], bool]:
    """The images of the ``train`` and ``test`` splits of a seed-layout dataset, and whether its image folder
    exists (without it, only captions can be audited)."""
    data_dir = Path(data_dir)
    name = name or infer_name(data_dir)
    images_dir = data_dir / f"{name}_images"
    images = []
    for split in SPLITS:
        listing, problems = read_split_listing(data_dir, split)
        fatal = [problem for problem in problems if problem.kind != "empty_caption"]
        if fatal:
            raise RSITRDataError(fatal, hint="rsitr-validate lists every problem")
        for file_name, captions in zip(listing.filenames, listing.captions, strict=True):
            images.append(AuditImage(name, split, file_name, images_dir / file_name, tuple(captions)))
    return images, images_dir.is_dir()


def perceptual_hashes(image: PIL.Image.Image) -> np.ndarray:
    """``(8, 4)`` uint64: the 256-bit perceptual hash of ``image`` under each of :data:`DIHEDRAL`."""
    reduced = image.convert("L").resize((REDUCED_SIZE, REDUCED_SIZE), PIL.Image.Resampling.LANCZOS)
    bits = [
        imagehash.phash(reduced if transform is None else reduced.transpose(transform), HASH_SIZE).hash
        for transform in DIHEDRAL.values()
    ]
    return np.packbits(np.stack(bits).reshape(len(bits), -1), axis=1).view(np.uint64)


def fingerprint(images: Sequence[AuditImage], progress: Iterable | None = None) -> Fingerprints:
    """Decode every image once: its pixel digest and perceptual hashes; images that cannot be read are
    listed in ``unreadable``."""
    kept, pixels, hashes, unreadable = [], [], [], []
    for image in progress if progress is not None else images:
        try:
            rgb = read_rgb(image.path)
        except UnreadableImageError:
            unreadable.append(image)
            continue
        array = np.asarray(rgb)
        digest = hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()
        kept.append(image)
        pixels.append(digest)
        hashes.append(perceptual_hashes(rgb))
    stacked = np.stack(hashes) if hashes else np.zeros((0, len(DIHEDRAL), HASH_SIZE**2 // 64), np.uint64)
    return Fingerprints(kept, pixels, stacked, unreadable)


def exact_pairs(prints: Fingerprints) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of images with the same pixels."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(prints.pixels):
        groups[digest].append(index)
    return [pair for members in groups.values() for pair in itertools.combinations(members, 2)]


def perceptual_pairs(
    prints: Fingerprints, max_distance: int = PERCEPTUAL_MAX_DISTANCE, chunk: int = 64
) -> list[tuple[int, int, int, int]]:
    """``(i, j, distance, transform)`` for every ``i < j`` whose hashes differ in at most ``max_distance``
    of 256 bits under the best transform of image ``j`` (an index into :data:`DIHEDRAL`)."""
    upright = prints.hashes[:, 0, :]  # (N, 4)
    found = []
    for start in range(0, len(upright), chunk):
        rows = upright[start : start + chunk, None, :]
        # (transforms, rows, N): Hamming distance of each row's upright hash to every image, transformed
        distances = np.stack(
            [
                np.bitwise_count(rows ^ prints.hashes[None, :, transform, :]).sum(-1, dtype=np.int32)
                for transform in range(len(DIHEDRAL))
            ]
        )
        best = distances.min(0)
        for row, column in zip(*np.nonzero(best <= max_distance), strict=True):
            i = start + int(row)
            if i < column:
                found.append(
                    (i, int(column), int(best[row, column]), int(distances[:, row, column].argmin()))
                )
    return found


@dataclass
class ExtraMethod:
    """A further image method of an audit (the embedding method of ``rsitr-audit --model``): ``find`` gives
    ``(i, j, score)`` for the pairs ``i < j`` of the images it is given that it flags; ``settings`` go into
    the manifest."""

    name: str
    settings: dict
    find: Callable[[list[AuditImage]], list[tuple[int, int, float]]]


def image_pairs(
    prints: Fingerprints,
    max_distance: int = PERCEPTUAL_MAX_DISTANCE,
    extra: Sequence[ExtraMethod] = (),
) -> list[ImagePair]:
    """Every pair of images found by the exact, the perceptual or an ``extra`` method, with the evidence of
    each."""
    evidence: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    transforms: dict[tuple[int, int], str] = {}
    for i, j in exact_pairs(prints):
        evidence[i, j]["exact"] = 0.0
    names = list(DIHEDRAL)
    for i, j, distance, transform in perceptual_pairs(prints, max_distance):
        evidence[i, j]["perceptual"] = float(distance)
        transforms[i, j] = names[transform]
    for method in extra:
        for i, j, score in method.find(prints.images):
            evidence[i, j][method.name] = float(score)
    return [
        ImagePair(prints.images[i], prints.images[j], found, transforms.get((i, j)))
        for (i, j), found in sorted(evidence.items())
    ]


def normalised(caption: str) -> str | None:
    """The caption as duplicates are compared (``None`` for one with no words)."""
    if not caption.strip():
        return None
    try:
        return normalise_caption(caption, max_words=len(caption), normalisation="words")
    except InputError:  # punctuation only
        return None


def caption_overlaps(images: Sequence[AuditImage]) -> list[CaptionOverlap]:
    """Shared normalised captions of every pair of splits (and within each split), in audited order."""
    by_group: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for index, image in enumerate(images):
        for caption in image.captions:
            text = normalised(caption)
            if text is not None:
                by_group[image.group][text].add(index)
    overlaps = []
    groups = list(by_group)
    for position, a in enumerate(groups):
        within = {text: owners for text, owners in by_group[a].items() if len(owners) > 1}
        owners_within = set().union(*within.values()) if within else set()
        overlaps.append(CaptionOverlap(a, a, len(within), len(owners_within), len(owners_within)))
        for b in groups[position + 1 :]:
            shared = by_group[a].keys() & by_group[b].keys()
            images_a = set().union(*(by_group[a][text] for text in shared)) if shared else set()
            images_b = set().union(*(by_group[b][text] for text in shared)) if shared else set()
            overlaps.append(CaptionOverlap(a, b, len(shared), len(images_a), len(images_b)))
    return overlaps


@dataclass
class AuditResult:
    """What an audit of several datasets found (:func:`audit`); :meth:`manifest` is ``audit.json``."""

    datasets: list[dict]
    pairs: list[ImagePair]
    overlaps: list[CaptionOverlap]
    unreadable: list[AuditImage]
    max_distance: int
    extra: Sequence[ExtraMethod] = ()

    def manifest(self) -> dict:
        def where(image: AuditImage) -> dict:
            return {"dataset": image.dataset, "split": image.split, "file": image.file_name}

        return {
            "datasets": self.datasets,
            "methods": {
                "exact": {"evidence": "SHA-256 of the decoded RGB pixels"},
                "perceptual": {
                    "evidence": "Hamming distance of imagehash.phash",
                    "bits": HASH_SIZE**2,
                    "max_distance": self.max_distance,
                    "transforms": list(DIHEDRAL),
                },
                **{method.name: method.settings for method in self.extra},
                "caption": {
                    "evidence": "equal captions after normalisation (lower case, letters and digits)"
                },
            },
            "image_pairs": [
                {
                    "a": where(pair.a),
                    "b": where(pair.b),
                    "evidence": pair.evidence,
                    "transform": pair.transform,
                }
                for pair in self.pairs
            ],
            "caption_overlaps": [vars(overlap) for overlap in self.overlaps],
            "unreadable_images": [where(image) for image in self.unreadable],
        }


def audit(
    data_dirs: Sequence[str | Path],
    max_distance: int = PERCEPTUAL_MAX_DISTANCE,
    progress: Callable[[list[AuditImage]], Iterable] | None = None,
    extra: Sequence[ExtraMethod] = (),
) -> AuditResult:
    """Audit the seed-layout datasets ``data_dirs`` together: image pairs (of the datasets whose image folder
    exists, by the exact, the perceptual and the ``extra`` methods) and caption overlaps; ``progress`` wraps
    the images as they are fingerprinted (e.g. tqdm)."""
    datasets, images, with_pixels = [], [], []
    for data_dir in data_dirs:
        found, has_images = read_images(data_dir)
        splits = {split: sum(image.split == split for image in found) for split in SPLITS}
        datasets.append(
            {"name": found[0].dataset, "path": str(data_dir), "images": splits, "images_audited": has_images}
        )
        images += found
        with_pixels += found if has_images else []
    prints = fingerprint(with_pixels, progress(with_pixels) if progress else None)
    pairs = image_pairs(prints, max_distance, extra)
    return AuditResult(datasets, pairs, caption_overlaps(images), prints.unreadable, max_distance, extra)


def linked_training_files(manifest: dict, dataset: str, evaluated: Iterable[str]) -> set[str]:
    """Files of ``dataset``'s training split that the manifest's image pairs link to the test split of a
    dataset in ``evaluated`` (by any method)."""
    tests = {(name, "test") for name in evaluated}
    linked = set()
    for pair in manifest.get("image_pairs", []):
        for mine, other in ((pair["a"], pair["b"]), (pair["b"], pair["a"])):
            if (mine["dataset"], mine["split"]) == (dataset, "train") and (
                other["dataset"],
                other["split"],
            ) in tests:
                linked.add(mine["file"])
    return linked
