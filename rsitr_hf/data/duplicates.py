"""Duplicates within and across the splits of RSITR datasets: what ``rsitr-audit`` finds.

Candidates first, then verification. Candidate methods, each named in the report:

- ``exact``: the same decoded pixels (SHA-256 of the RGB array and its shape), whatever the file format
  (verified by itself);
- ``perceptual``: a 256-bit DCT hash (``imagehash.phash``, ``hash_size=16``) of the greyscale image
  reduced to 128 px, compared under the 8 rotations and flips of the square; a candidate when the smallest
  Hamming distance is at most ``max_distance`` (default :data:`PERCEPTUAL_MAX_DISTANCE`; every pair, in
  FAISS's exact binary index). It survives
  re-encoding, resizing, colour changes, 90° rotations and flips, not crops or shifts of more than a few
  pixels;
- ``visual_words``: ORB features hashed into words, each image's nearest images by their shared words
  (:mod:`rsitr_hf.data.visual_words`): survives shifts, crops, overlapping tiles and rescaling too;
- further methods given as :class:`ExtraMethod` (``rsitr-audit --model``: CLIP embedding neighbours); their
  own candidates go to verification when their shared visual words agree with one transform.

Verification (:mod:`rsitr_hf.data.geometric`) fits a similarity transform to matched local features of
each candidate pair and verifies it when enough matches agree and the images overlap enough; the pair
records the transform, the overlap and the inliers. Only verified pairs are duplicates; the others stay in
the manifest as candidates.

Captions: ``caption``: the same caption after normalisation (lower case, every character that is not a
letter or a digit a space; :func:`rsitr_hf.data.pos.normalise_caption`, ``"words"``), counted per pair of
splits.

Images are read from the seed layout (``<name>_precomp``: ``train``/``test`` captions and file names,
``<name>_images/``); a dataset whose image folder is absent (the packaged split files) is audited by its
captions only.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import imagehash
import numpy as np
import PIL.Image

from ..utils.errors import InputError
from ..utils.optional import require
from ..utils.processes import in_processes
from .geometric import GeometricVerifier, Verification, one_thread
from .images import UnreadableImageError, read_rgb
from .pos import normalise_caption
from .seed_layout import SPLITS, RSITRDataError, infer_name, read_split_listing
from .visual_words import VisualWords, WordBag

HASH_SIZE = 16  # 256 bits
REDUCED_SIZE = 128
PERCEPTUAL_MAX_DISTANCE = 32
MODEL_FREE = ("exact", "perceptual", "visual_words")  # the methods verification trusts to propose
DEFAULT_WORDS = VisualWords()
DEFAULT_VERIFIER = GeometricVerifier()
DESCRIBED_IMAGES = 1024  # verification: described images kept for further pairs
BATCH = 64  # images fingerprinted, or pairs verified, at a time by one process
Progress = Callable[..., Iterable]  # tqdm's signature: progress(iterable, total=..., desc=...)
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
    """What the candidate methods compare, one row per readable image: ``pixels`` the SHA-256 of the pixels,
    ``hashes`` ``(N, 8, 4)`` uint64, the perceptual hash of each image under each of :data:`DIHEDRAL`,
    ``words`` each image's visual words (empty when they were not asked for)."""

    images: list[AuditImage]
    pixels: list[str]
    hashes: np.ndarray
    words: list[WordBag] = field(default_factory=list)
    unreadable: list[AuditImage] = field(default_factory=list)


@dataclass(frozen=True)
class ImagePair:
    """Two images a candidate method found alike: ``a`` comes first in the audited order; ``evidence`` maps
    each method that found them to its score (``exact``: 0; ``perceptual``: the Hamming distance;
    ``visual_words``: the shared words that agree with one transform); ``verified``: the same pixels, or
    verification's ``geometry`` says they show the same ground; ``shared_words``: for a pair only a further
    method (``--model``) proposed, how many of its shared visual words agree with one transform (verified
    only when at least the words' ``min_agreeing``)."""

    a: AuditImage
    b: AuditImage
    evidence: dict[str, float]
    transform: str | None = None  # the rotation or flip of ``b`` that matches ``a`` (perceptual)
    verified: bool = False
    geometry: Verification | None = None
    shared_words: int | None = None  # a further method's candidate: how many of its shared words agree

    def verifiable(self, words: VisualWords | None) -> bool:
        """Whether verification looks at the pair: not the same pixels, and when only a further method
        proposed it, at least ``words.min_agreeing`` of its shared words agree."""
        enough = words.min_agreeing if words is not None else 0
        return "exact" not in self.evidence and (self.shared_words is None or self.shared_words >= enough)


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


def fingerprint(
    images: Sequence[AuditImage],
    progress: Progress | None = None,
    words: VisualWords | None = None,
    workers: int = 1,
) -> Fingerprints:
    """Decode every image once: its pixel digest, perceptual hashes and (with ``words``) visual words, over
    ``workers`` processes; images that cannot be read are listed in ``unreadable``."""
    batches = [images[start : start + BATCH] for start in range(0, len(images), BATCH)]
    results = in_processes(functools.partial(fingerprint_batch, words=words), batches, workers, one_thread)
    if progress is not None:
        results = progress(results, total=len(batches), desc=f"fingerprints ({BATCH} images a step)")
    kept, pixels, hashes, bags, unreadable = [], [], [], [], []
    for batch, found in zip(batches, results, strict=True):
        for image, print_ in zip(batch, found, strict=True):
            if print_ is None:
                unreadable.append(image)
                continue
            kept.append(image)
            pixels.append(print_[0])
            hashes.append(print_[1])
            if words is not None:
                bags.append(print_[2])
    stacked = np.stack(hashes) if hashes else np.zeros((0, len(DIHEDRAL), HASH_SIZE**2 // 64), np.uint64)
    return Fingerprints(kept, pixels, stacked, bags, unreadable)


def fingerprint_batch(
    images: Sequence[AuditImage], words: VisualWords | None
) -> list[tuple[str, np.ndarray, WordBag | None] | None]:
    """``(pixel digest, perceptual hashes, visual words)`` of each image, ``None`` for one that cannot be
    read."""
    found = []
    for image in images:
        try:
            rgb = read_rgb(image.path)
        except UnreadableImageError:
            found.append(None)
            continue
        array = np.asarray(rgb)
        digest = hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()
        found.append((digest, perceptual_hashes(rgb), words.words(rgb) if words is not None else None))
    return found


def exact_pairs(prints: Fingerprints) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of images with the same pixels."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(prints.pixels):
        groups[digest].append(index)
    return [pair for members in groups.values() for pair in itertools.combinations(members, 2)]


def perceptual_pairs(
    prints: Fingerprints, max_distance: int = PERCEPTUAL_MAX_DISTANCE
) -> list[tuple[int, int, int, int]]:
    """``(i, j, distance, transform)`` for every ``i < j`` whose hashes differ in at most ``max_distance``
    of 256 bits under the best transform of image ``j`` (an index into :data:`DIHEDRAL`): every image's
    upright hash against every image's transformed hashes (FAISS's exact binary index)."""
    count, transforms, words = prints.hashes.shape
    if count < 2:
        return []
    faiss = require("faiss", "the perceptual method", "faiss-cpu", "audit")
    width = words * 8  # bytes of one hash
    index = faiss.IndexBinaryFlat(width * 8)
    index.add(np.ascontiguousarray(prints.hashes).view(np.uint8).reshape(count * transforms, width))
    upright = np.ascontiguousarray(prints.hashes[:, 0, :]).view(np.uint8)
    limits, distances, ids = index.range_search(upright, max_distance + 1)  # strictly below the radius
    rows = np.repeat(np.arange(count), np.diff(limits.astype(np.int64)))
    columns, transform = np.divmod(ids, transforms)
    best: dict[tuple[int, int], tuple[int, int]] = {}
    for i, j, distance, t in sorted(
        zip(rows.tolist(), columns.tolist(), distances.astype(int).tolist(), transform.tolist(), strict=True)
    ):
        if i < j:
            best.setdefault((i, j), (distance, t))  # the smallest distance, then the first transform
    return [(i, j, distance, t) for (i, j), (distance, t) in best.items()]


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
    max_distance: int | None = PERCEPTUAL_MAX_DISTANCE,
    extra: Sequence[ExtraMethod] = (),
    words: VisualWords | None = None,
    verifier: GeometricVerifier | None = None,
    progress: Progress | None = None,
    workers: int = 1,
) -> list[ImagePair]:
    """Every pair of images found by a candidate method (exact, perceptual, ``words`` on the fingerprints'
    visual words, ``extra``), with the evidence of each; pairs of equal pixels are verified, the others
    when ``verifier`` verifies them (over ``workers`` processes, ``progress`` wrapping the steps). A pair
    only ``extra`` proposed goes to verification when its shared words agree (:meth:`ImagePair.verifiable`):
    a model proposes look-alikes by the thousand."""
    evidence: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    transforms: dict[tuple[int, int], str] = {}
    for i, j in exact_pairs(prints):
        evidence[i, j]["exact"] = 0.0
    names = list(DIHEDRAL)
    for i, j, distance, transform in (
        perceptual_pairs(prints, max_distance) if max_distance is not None else ()
    ):
        evidence[i, j]["perceptual"] = float(distance)
        transforms[i, j] = names[transform]
    if words is not None:
        for i, j, agreeing in words.candidates(prints.words, workers):
            evidence[i, j]["visual_words"] = agreeing
    for method in extra:
        for i, j, score in method.find(prints.images):
            evidence[i, j][method.name] = float(score)
    shared_words = {}
    if words is not None:  # further methods' own candidates are verified when their shared words agree
        further = [pair for pair, found in evidence.items() if found.keys().isdisjoint(MODEL_FREE)]
        shared_words = dict(zip(further, words.agreeing_pairs(prints.words, further, workers), strict=True))
    keys = sorted(evidence)
    pairs = [
        ImagePair(
            prints.images[i],
            prints.images[j],
            evidence[i, j],
            transforms.get((i, j)),
            "exact" in evidence[i, j],
            shared_words=shared_words.get((i, j)),
        )
        for i, j in keys
    ]
    if verifier is None:
        return pairs
    wanted = [key for key, pair in zip(keys, pairs, strict=True) if pair.verifiable(words)]
    geometry = verify_pairs(prints.images, wanted, verifier, progress, workers)
    return [
        replace(pair, verified=geometry[key].duplicate, geometry=geometry[key]) if key in geometry else pair
        for key, pair in zip(keys, pairs, strict=True)
    ]


def verify_pairs(
    images: Sequence[AuditImage],
    pairs: Sequence[tuple[int, int]],
    verifier: GeometricVerifier,
    progress: Progress | None = None,
    workers: int = 1,
) -> dict[tuple[int, int], Verification]:
    """The verification of each pair ``(i, j)`` of ``images``, over ``workers`` processes; each process
    reads and describes an image once for the pairs it verifies (while among its last
    :data:`DESCRIBED_IMAGES` described)."""
    pairs = sorted(pairs)
    batches = [
        [(images[i].path, images[j].path) for i, j in pairs[start : start + BATCH]]
        for start in range(0, len(pairs), BATCH)
    ]
    results = in_processes(functools.partial(verify_batch, verifier=verifier), batches, workers, one_thread)
    if progress is not None:
        results = progress(results, total=len(batches), desc=f"verification ({BATCH} pairs a step)")
    found = [verification for batch in results for verification in batch]
    described.cache_clear()
    return dict(zip(pairs, found, strict=True))


def verify_batch(pairs: Sequence[tuple[Path, Path]], verifier: GeometricVerifier) -> list[Verification]:
    """The verification of each pair of image files."""
    return [
        verifier.verify_described(
            described(first, False, verifier),
            described(second, False, verifier),
            functools.partial(described, second, True, verifier),
        )
        for first, second in pairs
    ]


@functools.lru_cache(maxsize=DESCRIBED_IMAGES)
def described(path: Path, mirrored: bool, verifier: GeometricVerifier):
    """The image at ``path`` (its mirror image when ``mirrored``) described by ``verifier``."""
    rgb = read_rgb(path)
    return verifier.describe(rgb.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else rgb)


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
    max_distance: int | None
    extra: Sequence[ExtraMethod] = ()
    words: VisualWords | None = None
    verifier: GeometricVerifier | None = None

    def manifest(self) -> dict:
        def where(image: AuditImage) -> dict:
            return {"dataset": image.dataset, "split": image.split, "file": image.file_name}

        perceptual = {
            "evidence": "Hamming distance of imagehash.phash",
            "bits": HASH_SIZE**2,
            "max_distance": self.max_distance,
            "transforms": list(DIHEDRAL),
        }
        words = {"evidence": "ORB visual words shared where one similarity transform puts them"}
        verification = {"evidence": "inliers and overlap of a RANSAC similarity transform of local features"}
        return {
            "datasets": self.datasets,
            "methods": {
                "exact": {"evidence": "SHA-256 of the decoded RGB pixels"},
                **({"perceptual": perceptual} if self.max_distance is not None else {}),
                **({"visual_words": {**words, **asdict(self.words)}} if self.words else {}),
                **{method.name: method.settings for method in self.extra},
                "caption": {
                    "evidence": "equal captions after normalisation (lower case, letters and digits)"
                },
            },
            "verification": {**verification, **asdict(self.verifier)} if self.verifier else None,
            "image_pairs": [
                {
                    "a": where(pair.a),
                    "b": where(pair.b),
                    "evidence": pair.evidence,
                    "transform": pair.transform,
                    "verified": pair.verified,
                    "geometry": pair.geometry.record() if pair.geometry else None,
                    "shared_words": pair.shared_words,
                }
                for pair in self.pairs
            ],
            "caption_overlaps": [vars(overlap) for overlap in self.overlaps],
            "unreadable_images": [where(image) for image in self.unreadable],
        }


def audit(
    data_dirs: Sequence[str | Path],
    max_distance: int | None = PERCEPTUAL_MAX_DISTANCE,
    progress: Progress | None = None,
    extra: Sequence[ExtraMethod] = (),
    words: VisualWords | None = DEFAULT_WORDS,
    verifier: GeometricVerifier | None = DEFAULT_VERIFIER,
    workers: int = 1,
) -> AuditResult:
    """Audit the seed-layout datasets ``data_dirs`` together: image pairs (of the datasets whose image folder
    exists: candidates of the exact, the perceptual, the visual-word (``words``) and the ``extra`` methods,
    verified by ``verifier``) and caption overlaps; images are fingerprinted and pairs verified over
    ``workers`` processes, ``progress`` (tqdm's signature) wrapping the steps."""
    datasets, images, with_pixels = [], [], []
    for data_dir in data_dirs:
        found, has_images = read_images(data_dir)
        splits = {split: sum(image.split == split for image in found) for split in SPLITS}
        datasets.append(
            {"name": found[0].dataset, "path": str(data_dir), "images": splits, "images_audited": has_images}
        )
        images += found
        with_pixels += found if has_images else []
    prints = fingerprint(with_pixels, progress, words, workers)
    pairs = image_pairs(prints, max_distance, extra, words, verifier, progress, workers)
    return AuditResult(
        datasets, pairs, caption_overlaps(images), prints.unreadable, max_distance, extra, words, verifier
    )


def linked_training_files(
    manifest: dict, dataset: str, evaluated: Iterable[str], unverified: bool = False
) -> set[str]:
    """Files of ``dataset``'s training split that the manifest's verified image pairs (with
    ``unverified``: every candidate pair) link to the test split of a dataset in ``evaluated``."""
    tests = {(name, "test") for name in evaluated}
    linked = set()
    for pair in manifest.get("image_pairs", []):
        if not (unverified or pair["verified"]):
            continue
        for mine, other in ((pair["a"], pair["b"]), (pair["b"], pair["a"])):
            if (mine["dataset"], mine["split"]) == (dataset, "train") and (
                other["dataset"],
                other["split"],
            ) in tests:
                linked.add(mine["file"])
    return linked
