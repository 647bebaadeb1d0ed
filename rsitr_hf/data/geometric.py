"""Geometric verification of duplicate candidates: whether two images show the same ground, shifted,
cropped, rescaled, rotated or flipped, and the transform that maps one onto the other.

Local features (OpenCV's SIFT, scale- and rotation-invariant; ORB as a faster option) are detected in
each image, resized to ``side`` pixels on its longer side (small images enlarged: SIFT finds few features
in a weakly textured 256-px image; ``contrast_threshold`` below OpenCV's 0.04 keeps faint ones), matched
(Lowe's ratio test), and a similarity transform (shift, scale, rotation) is fitted to the matches by RANSAC
(``cv2.estimateAffinePartial2D``, seeded). A pair is a duplicate when at least ``min_inliers`` matches agree
with the transform within ``ransac_threshold`` pixels, the transform puts at least ``min_overlap`` of the
smaller image inside the other (the outlines' intersection, ``cv2.intersectConvexConvex``) and changes the
scale by at most ``max_scale_change`` (matches of different places that agree by chance collapse onto a
few points). A mirrored copy is tried mirrored. Needs OpenCV (``pip install "rsitr_hf[audit]"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import PIL.Image

from ..utils.optional import require

FEATURES = ("sift", "orb")
MAX_SCALE_CHANGE = 4.0  # larger changes of scale are taken for chance agreements collapsing onto a point
Described = tuple[np.ndarray, "np.ndarray | None", tuple[int, int]]  # points, descriptors, (width, height)


def require_cv2():
    return require("cv2", "geometric verification", "opencv-python-headless", "audit")


@dataclass(frozen=True)
class Verification:
    """What verification found for a pair ``(first, second)``: whether it is a duplicate, the matches and
    how many agree with the fitted transform (``inliers``), the transform from ``second``'s pixels to
    ``first``'s (``shift``: where ``second``'s origin lands, ``scale``, ``rotation`` in degrees,
    ``mirrored``: ``second`` was flipped left-right first) and the share of the smaller image inside the
    other (``overlap``)."""

    duplicate: bool
    matches: int
    inliers: int
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    rotation: float = 0.0
    mirrored: bool = False
    overlap: float = 0.0

    def outline(self, size: tuple[int, int]) -> np.ndarray:
        """``(4, 2)``: the corners of the second image (of ``size``, width and height) in the first's pixels
        (a mirror image has the same outline)."""
        width, height = size
        angle = math.radians(self.rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        linear = self.scale * np.array([[cos, -sin], [sin, cos]])
        corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
        return corners @ linear.T + np.array(self.shift)

    def record(self) -> dict:
        """The pair's ``geometry`` in the audit's manifest."""
        found = asdict(self)
        del found["duplicate"]
        return {
            **found,
            "shift": [round(value, 2) for value in self.shift],
            "scale": round(self.scale, 4),
            "rotation": round(self.rotation, 2),
            "overlap": round(self.overlap, 4),
        }


@dataclass(frozen=True)
class GeometricVerifier:
    """Settings of the verification (see the module)."""

    features: str = "sift"
    max_features: int = 1000
    side: int = 384
    contrast_threshold: float = 0.01
    ratio: float = 0.75
    ransac_threshold: float = 4.0
    min_inliers: int = 20
    min_overlap: float = 0.25
    max_scale_change: float = MAX_SCALE_CHANGE

    def __post_init__(self):
        if self.features not in FEATURES:
            raise ValueError(f"features: expected one of {FEATURES}, got {self.features!r}")

    def describe(self, image: PIL.Image.Image) -> Described:
        """``(points, descriptors, size)``: the image's keypoints in its own pixels, their descriptors
        (``None`` when it has none) and its ``(width, height)``."""
        cv2 = require_cv2()
        grey, factor = resized_grey(image, self.side)
        detector = (
            cv2.SIFT_create(nfeatures=self.max_features, contrastThreshold=self.contrast_threshold)
            if self.features == "sift"
            else cv2.ORB_create(nfeatures=self.max_features)
        )
        keypoints, descriptors = detector.detectAndCompute(grey, None)
        points = np.array([point.pt for point in keypoints], dtype=np.float32).reshape(-1, 2) / factor
        return points, descriptors, image.size

    def verify(self, first: PIL.Image.Image, second: PIL.Image.Image) -> Verification:
        """Whether ``second`` shows the ground ``first`` shows (as it is, or mirrored)."""
        return self.verify_described(
            self.describe(first),
            self.describe(second),
            lambda: self.describe(second.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)),
        )

    def verify_described(
        self, first: Described, second: Described, second_mirrored: Callable[[], Described]
    ) -> Verification:
        """:meth:`verify` on described images (``second_mirrored`` describes ``second``'s mirror image, only
        when the pair is not verified as it is)."""
        found = self.fit(first, second)
        if found.duplicate:
            return found
        mirrored = self.fit(first, second_mirrored())
        if mirrored.duplicate or mirrored.inliers > found.inliers:
            return Verification(**{**mirrored.__dict__, "mirrored": True})
        return found

    def fit(self, first: Described, second: Described) -> Verification:
        """Match two described images and fit the transform from the second's pixels to the first's."""
        cv2 = require_cv2()
        (points_a, descriptors_a, size_a), (points_b, descriptors_b, size_b) = first, second
        if descriptors_a is None or descriptors_b is None or len(points_a) < 2 or len(points_b) < 2:
            return Verification(False, 0, 0)
        norm = cv2.NORM_L2 if self.features == "sift" else cv2.NORM_HAMMING
        pairs = cv2.BFMatcher(norm).knnMatch(descriptors_b, descriptors_a, k=2)
        passed = [m[0] for m in pairs if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
        best = {}  # one match per feature of the first image: chance matches piling on one point count once
        for match in sorted(passed, key=lambda match: match.distance):
            best.setdefault(match.trainIdx, match)
        good = list(best.values())
        if len(good) < 3:
            return Verification(False, len(good), 0)
        source = np.float32([points_b[m.queryIdx] for m in good])
        target = np.float32([points_a[m.trainIdx] for m in good])
        transform, inliers = fitted_similarity(source, target, self.ransac_threshold, max_iters=5000)
        if transform is None:
            return Verification(False, len(good), 0)
        scale = math.hypot(transform[0, 0], transform[1, 0])
        rotation = math.degrees(math.atan2(transform[1, 0], transform[0, 0]))
        overlap = overlap_share(transform, size_a, size_b)
        plausible = plausible_scale(transform, self.max_scale_change)
        duplicate = inliers >= self.min_inliers and overlap >= self.min_overlap and plausible
        shift = (float(transform[0, 2]), float(transform[1, 2]))
        return Verification(duplicate, len(good), inliers, shift, scale, rotation, False, overlap)


def fitted_similarity(
    source: np.ndarray, target: np.ndarray, threshold: float, max_iters: int = 2000
) -> tuple[np.ndarray | None, int]:
    """The similarity transform (2 x 3) from ``source`` points to ``target`` points that the most pairs agree
    with within ``threshold`` pixels (RANSAC, seeded), and how many agree; ``(None, 0)`` when none fits."""
    cv2 = require_cv2()
    cv2.setRNGSeed(0)
    transform, agree = cv2.estimateAffinePartial2D(
        np.ascontiguousarray(source, np.float32),
        np.ascontiguousarray(target, np.float32),
        method=cv2.RANSAC,
        ransacReprojThreshold=threshold,
        maxIters=max_iters,
    )
    return (None, 0) if transform is None else (transform, int(agree.sum()))


def plausible_scale(transform: np.ndarray, max_change: float = MAX_SCALE_CHANGE) -> bool:
    """Whether ``transform`` changes the scale by at most ``max_change`` either way."""
    return 1 / max_change <= math.hypot(transform[0, 0], transform[1, 0]) <= max_change


def one_thread() -> None:
    """OpenCV on one thread (a worker process among others)."""
    require_cv2().setNumThreads(1)


def resized_grey(image: PIL.Image.Image, side: int) -> tuple[np.ndarray, float]:
    """``image`` in grey levels, resized to ``side`` pixels on its longer side, and the factor applied."""
    cv2 = require_cv2()
    grey = np.asarray(image.convert("L"))
    factor = side / max(grey.shape)
    if factor != 1.0:
        size = (max(1, round(grey.shape[1] * factor)), max(1, round(grey.shape[0] * factor)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return grey, factor


def overlap_share(transform: np.ndarray, size_a: tuple[int, int], size_b: tuple[int, int]) -> float:
    """The area where image ``b`` (mapped into ``a``'s pixels by ``transform``) and image ``a`` overlap, as a
    share of the smaller of the two (in ``a``'s pixels)."""
    cv2 = require_cv2()
    (width_a, height_a), (width_b, height_b) = size_a, size_b
    outline_a = np.float32([[0, 0], [width_a, 0], [width_a, height_a], [0, height_a]])
    corners_b = np.float32([[0, 0], [width_b, 0], [width_b, height_b], [0, height_b]])
    outline_b = corners_b @ transform[:, :2].T.astype(np.float32) + transform[:, 2].astype(np.float32)
    area, _ = cv2.intersectConvexConvex(outline_a, outline_b)
    area_b = abs(float(cv2.contourArea(outline_b)))
    smaller = min(float(width_a * height_a), area_b)
    return float(area) / smaller if smaller > 0 else 0.0
