"""Geometric verification of duplicate candidates: whether two images show the same ground, shifted,
cropped, rescaled, rotated or flipped, and the transform that maps one onto the other.

Local features (OpenCV's SIFT, scale- and rotation-invariant; ORB as a faster option) are detected in
each image (reduced to at most ``max_side`` pixels), matched (Lowe's ratio test), and a similarity
transform (shift, scale, rotation) is fitted to the matches by RANSAC (``cv2.estimateAffinePartial2D``,
seeded). A pair is a duplicate when at least ``min_inliers`` matches agree with the transform within
``ransac_threshold`` pixels and the transform puts at least ``min_overlap`` of the smaller image inside the
other (the outlines' intersection, ``cv2.intersectConvexConvex``). A mirrored copy is tried mirrored. Needs
OpenCV (``pip install "rsitr_hf[audit]"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import PIL.Image

from ..utils.optional import require

FEATURES = ("sift", "orb")


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


@dataclass(frozen=True)
class GeometricVerifier:
    """Settings of the verification (see the module)."""

    features: str = "sift"
    max_features: int = 2000
    max_side: int = 512
    ratio: float = 0.75
    ransac_threshold: float = 4.0
    min_inliers: int = 20
    min_overlap: float = 0.25

    def __post_init__(self):
        if self.features not in FEATURES:
            raise ValueError(f"features: expected one of {FEATURES}, got {self.features!r}")

    def describe(self, image: PIL.Image.Image) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
        """``(points, descriptors, size)``: the image's keypoints in its own pixels, their descriptors
        (``None`` when it has none) and its ``(width, height)``."""
        cv2 = require_cv2()
        grey = np.asarray(image.convert("L"))
        factor = min(1.0, self.max_side / max(grey.shape))
        if factor < 1.0:
            size = (max(1, round(grey.shape[1] * factor)), max(1, round(grey.shape[0] * factor)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        detector = (
            cv2.SIFT_create(nfeatures=self.max_features)
            if self.features == "sift"
            else cv2.ORB_create(nfeatures=self.max_features)
        )
        keypoints, descriptors = detector.detectAndCompute(grey, None)
        points = np.array([point.pt for point in keypoints], dtype=np.float32).reshape(-1, 2) / factor
        return points, descriptors, image.size

    def verify(self, first: PIL.Image.Image, second: PIL.Image.Image) -> Verification:
        """Whether ``second`` shows the ground ``first`` shows (as it is, or mirrored)."""
        described = self.describe(first)
        found = self.fit(described, self.describe(second))
        if found.duplicate:
            return found
        mirrored = self.fit(described, self.describe(second.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)))
        if mirrored.duplicate or mirrored.inliers > found.inliers:
            return Verification(**{**mirrored.__dict__, "mirrored": True})
        return found

    def fit(self, first, second) -> Verification:
        """Match two described images and fit the transform from the second's pixels to the first's."""
        cv2 = require_cv2()
        (points_a, descriptors_a, size_a), (points_b, descriptors_b, size_b) = first, second
        if descriptors_a is None or descriptors_b is None or len(points_a) < 2 or len(points_b) < 2:
            return Verification(False, 0, 0)
        norm = cv2.NORM_L2 if self.features == "sift" else cv2.NORM_HAMMING
        pairs = cv2.BFMatcher(norm).knnMatch(descriptors_b, descriptors_a, k=2)
        good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
        if len(good) < 3:
            return Verification(False, len(good), 0)
        source = np.float32([points_b[m.queryIdx] for m in good])
        target = np.float32([points_a[m.trainIdx] for m in good])
        cv2.setRNGSeed(0)
        transform, agree = cv2.estimateAffinePartial2D(
            source, target, method=cv2.RANSAC, ransacReprojThreshold=self.ransac_threshold, maxIters=5000
        )
        if transform is None:
            return Verification(False, len(good), 0)
        inliers = int(agree.sum())
        scale = math.hypot(transform[0, 0], transform[1, 0])
        rotation = math.degrees(math.atan2(transform[1, 0], transform[0, 0]))
        overlap = overlap_share(transform, size_a, size_b)
        duplicate = inliers >= self.min_inliers and overlap >= self.min_overlap
        shift = (float(transform[0, 2]), float(transform[1, 2]))
        return Verification(duplicate, len(good), inliers, shift, scale, rotation, False, overlap)


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
