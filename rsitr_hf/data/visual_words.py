"""Visual words: the audit's model-free candidate method that survives shifts, crops, rescaling, rotations
and mirroring (``rsitr-audit``'s ``visual_words``).

Each image's ORB features (OpenCV; FAST corners at several scales with a rotation-invariant 256-bit
descriptor) are found in the image and in its mirror image, resized to ``side`` pixels on its longer side
(small images are enlarged: ORB finds few features in a 256-px image), at a corner contrast of
``fast_threshold``. Each descriptor becomes ``tables`` words: the values of ``bits`` of its bits, chosen at
random (seeded) once per table, which is locality-sensitive hashing for the Hamming distance: a feature seen
again in a copy has nearly the same descriptor and so, in at least one table, very likely the same word. An
image is the set of its words; two images are compared by the cosine of these sets weighted by inverse
document frequency (words many images share say little; words more than ``max_share`` of the images have
are left out). How alike two different places look depends on the data, so the threshold is relative: of
each image's ``neighbours`` most similar images, those whose cosine is at least ``margin`` times that of its
``reference``-th most similar image (and at least ``min_cosine``) are looked at where their shared words
lie: the words of a copy lie where the original's do, moved by one similarity transform (shift, scale,
rotation; mirrored for a mirror image). A pair whose shared words agree with one transform,
``min_agreeing`` of them within ``tolerance`` pixels, is a candidate; geometric verification decides
(:mod:`rsitr_hf.data.geometric`).

Faint views (weakly textured ground, such as fields, after a loss of contrast or JPEG smoothing) have few
corners at ``fast_threshold``: a view with fewer than ``min_strong`` is described again at
``faint_threshold``, and those features, not the strong ones, are what its spatial check looks at. The
ranking keeps the strong features only: faint corners are mostly noise, which would make every faint image
look like every other. Needs OpenCV (``pip install "rsitr_hf[audit]"``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import PIL.Image
import scipy.sparse

from .geometric import fitted_similarity, plausible_scale, require_cv2, resized_grey

DESCRIPTOR_BITS = 256


@dataclass
class WordBag:
    """An image's words: ``words`` ``(tables, features)`` int32, one per table and feature; where each feature
    lies in the image resized to the settings' ``side`` (``points``, ``(features, 2)`` float16), whether it
    was found in the mirror image (``mirrored``, in the mirror image's pixels), whether its words rank the
    image's neighbours (``ranked``: features found at the settings' ``fast_threshold``) and whether they are
    looked at in the spatial check (``checked``: those, or for a faint view, the features found at
    ``faint_threshold``)."""

    words: np.ndarray
    points: np.ndarray
    mirrored: np.ndarray
    ranked: np.ndarray
    checked: np.ndarray

    def ranking(self) -> np.ndarray:
        """The words that rank the image's neighbours."""
        return self.words[:, self.ranked].ravel()

    def seen(self, mirrored: bool) -> tuple[np.ndarray, np.ndarray]:
        """The checked words of the image (or of its mirror image) and where each lies."""
        features = np.flatnonzero((self.mirrored == mirrored) & self.checked)
        return self.words[:, features].ravel(), self.points[np.tile(features, len(self.words))]


@dataclass(frozen=True)
class VisualWords:
    """Settings of the visual-word candidates (see the module)."""

    max_features: int = 1000
    side: int = 512
    fast_threshold: int = 20
    min_strong: int = 400
    faint_threshold: int = 8
    tables: int = 4
    bits: int = 20
    seed: int = 0
    max_share: float = 0.01
    neighbours: int = 5
    reference: int = 10
    margin: float = 1.3
    min_cosine: float = 0.005
    min_agreeing: int = 10
    tolerance: float = 4.0

    def __post_init__(self):
        if self.tables << self.bits > np.iinfo(np.int32).max:
            raise ValueError(f"tables << bits must fit in 31 bits, got {self.tables} << {self.bits}")

    def bit_positions(self) -> np.ndarray:
        """``(tables, bits)``: which descriptor bits make each table's words."""
        rng = np.random.default_rng(self.seed)
        return np.stack([rng.choice(DESCRIPTOR_BITS, self.bits, replace=False) for _ in range(self.tables)])

    def words(self, image: PIL.Image.Image) -> WordBag:
        """The words of ``image`` and of its mirror image."""
        cv2 = require_cv2()
        grey, _ = resized_grey(image, self.side)
        strong = cv2.ORB_create(nfeatures=self.max_features, fastThreshold=self.fast_threshold)
        faint = cv2.ORB_create(nfeatures=self.max_features, fastThreshold=self.faint_threshold)
        found = []  # (keypoints, descriptors, mirrored, ranked, checked) of each detection
        for flipped, view in ((False, grey), (True, np.ascontiguousarray(grey[:, ::-1]))):
            keypoints, descriptors = strong.detectAndCompute(view, None)
            count = 0 if descriptors is None else len(descriptors)
            if count:
                found.append((keypoints, descriptors, flipped, True, count >= self.min_strong))
            if count < self.min_strong:
                keypoints, descriptors = faint.detectAndCompute(view, None)
                if descriptors is not None:
                    found.append((keypoints, descriptors, flipped, False, True))
        if not found:
            empty = np.zeros(0, bool)
            return WordBag(
                np.zeros((self.tables, 0), np.int32), np.zeros((0, 2), np.float16), empty, empty, empty
            )
        bits = np.unpackbits(np.concatenate([part[1] for part in found]), axis=1)  # (features, 256)
        weights = np.int32(1) << np.arange(self.bits, dtype=np.int32)
        words = np.stack(
            [
                (bits[:, positions].astype(np.int32) @ weights) + np.int32(table << self.bits)
                for table, positions in enumerate(self.bit_positions())
            ]
        )

        def flags(column: int) -> np.ndarray:
            return np.concatenate([np.full(len(part[1]), part[column]) for part in found])

        points = np.concatenate([np.array([point.pt for point in part[0]], np.float32) for part in found])
        return WordBag(words, points.astype(np.float16), flags(2), flags(3), flags(4))

    def candidates(self, bags: list[WordBag], workers: int = 1) -> list[tuple[int, int, float]]:
        """``(i, j, agreeing)``, ``i < j``: the pairs of :meth:`similar` images whose shared words agree with
        one transform (:meth:`agreeing`), at least ``min_agreeing`` of them (over ``workers`` threads)."""
        pairs = self.similar(bags, workers)
        counts = self.agreeing_pairs(bags, pairs, workers)
        return [(i, j, float(n)) for (i, j), n in zip(pairs, counts, strict=True) if n >= self.min_agreeing]

    def agreeing_pairs(
        self, bags: list[WordBag], pairs: list[tuple[int, int]], workers: int = 1
    ) -> list[int]:
        """:meth:`agreeing` of each pair ``(i, j)`` of ``bags``, over ``workers`` threads."""
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda pair: self.agreeing(bags[pair[0]], bags[pair[1]]), pairs))

    def similar(self, bags: list[WordBag], workers: int = 1, chunk: int = 1024) -> list[tuple[int, int]]:
        """``(i, j)``, ``i < j``: of each image's ``neighbours`` most similar others (idf-weighted cosine of
        their sets of words), those at least ``margin`` times as similar as its ``reference``-th most similar
        image (when there are more than ``reference`` images), and at least ``min_cosine``; the rows of the
        cosine matrix in chunks over ``workers`` threads."""
        count = len(bags)
        if count < 2:
            return []
        unit = self.unit_rows(bags)
        unit_t = unit.T.tocsr()
        k = min(self.neighbours, count - 1)
        ranked = min(max(k, self.reference), count)

        def pairs_of(start: int) -> list[tuple[int, int]]:
            cosine = (unit[start : start + chunk] @ unit_t).toarray()
            block = np.arange(len(cosine))
            cosine[block, start + block] = -1.0
            top = np.argpartition(-cosine, ranked - 1, axis=1)[:, :ranked]
            values = np.take_along_axis(cosine, top, 1)
            order = np.argsort(-values, axis=1, kind="stable")
            top, values = np.take_along_axis(top, order, 1), np.take_along_axis(values, order, 1)
            floor = np.full(len(cosine), self.min_cosine)
            if count > self.reference:  # fewer images: every neighbour above min_cosine is looked at
                floor = np.maximum(floor, self.margin * values[:, self.reference - 1])
            rows, columns = np.nonzero(values[:, :k] >= floor[:, None])
            return [
                (start + int(row), int(top[row, column])) for row, column in zip(rows, columns, strict=True)
            ]

        found = set()
        with ThreadPoolExecutor(workers) as pool:
            for pairs in pool.map(pairs_of, range(0, count, chunk)):
                found.update((min(i, j), max(i, j)) for i, j in pairs)
        return sorted(found)

    def unit_rows(self, bags: list[WordBag]) -> scipy.sparse.csr_matrix:
        """One row per image, one column per word: the idf weight of each word the image has, among those
        that more than one and at most ``max_share`` of the images (or ``reference``) have, each row of unit
        length (or zero)."""
        count = len(bags)
        ranking = [bag.ranking() for bag in bags]
        sizes = [len(words) for words in ranking]
        present = scipy.sparse.csr_matrix(
            (
                np.ones(sum(sizes), np.float32),
                np.concatenate(ranking),
                np.concatenate([[0], np.cumsum(sizes)]),
            ),
            shape=(count, self.tables << self.bits),
        )
        present.sum_duplicates()  # a word twice in one image counts once
        frequency = np.bincount(present.indices, minlength=present.shape[1])
        shared = (frequency > 1) & (frequency <= max(self.reference, self.max_share * count))
        weight = np.where(shared, np.log(count / np.maximum(frequency, 1)), 0.0).astype(np.float32)
        present.data = weight[present.indices]
        present.eliminate_zeros()
        entry_rows = np.repeat(np.arange(count), np.diff(present.indptr))
        norms = np.sqrt(np.bincount(entry_rows, present.data.astype(np.float64) ** 2, minlength=count))
        present.data /= norms[entry_rows].astype(np.float32)
        return present

    def agreeing(self, first: WordBag, second: WordBag) -> int:
        """How many of the words ``first`` (as it is) shares with ``second`` (as it is, or mirrored) lie
        where one similarity transform puts them (RANSAC, seeded), one per point of ``first``."""
        words, points = first.seen(False)
        best = 0
        for flipped in (False, True):
            their_words, their_points = second.seen(flipped)
            _, mine, theirs = np.intersect1d(words, their_words, return_indices=True)
            pairs = np.unique(
                np.concatenate([points[mine], their_points[theirs]], axis=1).astype(np.float32), axis=0
            )
            pairs = pairs[np.unique(pairs[:, :2], axis=0, return_index=True)[1]]
            if len(pairs) < max(3, self.min_agreeing, best + 1):
                continue
            transform, agree = fitted_similarity(pairs[:, 2:], pairs[:, :2], self.tolerance)
            if transform is not None and plausible_scale(transform):
                best = max(best, agree)
        return best
