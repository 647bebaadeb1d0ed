"""Visual words: the audit's model-free candidate method that survives shifts, crops, rescaling, rotations
and mirroring (``rsitr-audit``'s ``visual_words``).

Each image's ORB features (OpenCV; FAST corners at several scales with a rotation-invariant 256-bit
descriptor) are found in the image and in its mirror image, resized to ``side`` pixels on its longer side
(small images are enlarged: ORB finds few features in a 256-px image). Each descriptor becomes ``tables``
words: the values of ``bits`` of its bits, chosen at random (seeded) once per table, which is
locality-sensitive hashing for the Hamming distance: a feature seen again in a copy has nearly the same
descriptor and so, in at least one table, very likely the same word. An image is the set of its words; two
images are compared by the cosine of these sets weighted by inverse document frequency (words many images
share say little; words more than ``max_share`` of the images have are left out). How alike two different
places look depends on the data, so the threshold is relative: of each image's ``neighbours`` most similar
images, those whose cosine is at least ``margin`` times that of its ``reference``-th most similar image (and
at least ``min_cosine``) are looked at where their shared words lie: the words of a copy lie where the
original's do, moved by one similarity transform (shift, scale, rotation; mirrored for a mirror image). A
pair whose shared words agree with one transform, ``min_agreeing`` of them within ``tolerance`` pixels, is a
candidate; geometric verification decides (:mod:`rsitr_hf.data.geometric`). Needs OpenCV (``pip install
"rsitr_hf[audit]"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import scipy.sparse

from .geometric import fitted_similarity, plausible_scale, require_cv2, resized_grey

DESCRIPTOR_BITS = 256


@dataclass
class WordBag:
    """An image's words: one per feature and table (``words``, int64), where the feature lies in the
    image resized to the settings' ``side`` (``points``, float16) and whether it was found in the mirror
    image (``mirrored``, in the mirror image's pixels)."""

    words: np.ndarray
    points: np.ndarray
    mirrored: np.ndarray

    def distinct(self) -> np.ndarray:
        return np.unique(self.words)


@dataclass(frozen=True)
class VisualWords:
    """Settings of the visual-word candidates (see the module)."""

    max_features: int = 1000
    side: int = 512
    tables: int = 4
    bits: int = 20
    seed: int = 0
    max_share: float = 0.01
    neighbours: int = 5
    reference: int = 10
    margin: float = 1.3
    min_cosine: float = 0.005
    min_agreeing: int = 8
    tolerance: float = 4.0

    def bit_positions(self) -> np.ndarray:
        """``(tables, bits)``: which descriptor bits make each table's words."""
        rng = np.random.default_rng(self.seed)
        return np.stack([rng.choice(DESCRIPTOR_BITS, self.bits, replace=False) for _ in range(self.tables)])

    def words(self, image: PIL.Image.Image) -> WordBag:
        """The words of ``image`` and of its mirror image."""
        cv2 = require_cv2()
        grey, _ = resized_grey(image, self.side)
        detector = cv2.ORB_create(nfeatures=self.max_features)
        points, descriptors, mirrored = [], [], []
        for flipped, view in ((False, grey), (True, np.ascontiguousarray(grey[:, ::-1]))):
            keypoints, found = detector.detectAndCompute(view, None)
            if found is not None:
                points.append(np.array([keypoint.pt for keypoint in keypoints], np.float32))
                descriptors.append(found)
                mirrored.append(np.full(len(found), flipped))
        if not descriptors:
            return WordBag(np.zeros(0, np.int64), np.zeros((0, 2), np.float16), np.zeros(0, bool))
        bits = np.unpackbits(np.concatenate(descriptors), axis=1)  # (features, 256)
        weights = np.int64(1) << np.arange(self.bits, dtype=np.int64)
        words = [
            (bits[:, positions].astype(np.int64) @ weights) + (np.int64(table) << self.bits)
            for table, positions in enumerate(self.bit_positions())
        ]
        return WordBag(
            np.concatenate(words),
            np.tile(np.concatenate(points), (self.tables, 1)).astype(np.float16),
            np.tile(np.concatenate(mirrored), self.tables),
        )

    def candidates(self, bags: list[WordBag], chunk: int = 1024) -> list[tuple[int, int, float]]:
        """``(i, j, agreeing)``, ``i < j``: the pairs of :meth:`similar` images whose shared words agree with
        one transform (:meth:`agreeing`), at least ``min_agreeing`` of them."""
        found = []
        for i, j in self.similar([bag.distinct() for bag in bags], chunk):
            agreeing = self.agreeing(bags[i], bags[j])
            if agreeing >= self.min_agreeing:
                found.append((i, j, float(agreeing)))
        return found

    def similar(self, distinct: list[np.ndarray], chunk: int = 1024) -> list[tuple[int, int]]:
        """``(i, j)``, ``i < j``: of each image's ``neighbours`` most similar others (idf-weighted cosine of
        their sets of ``distinct`` words), those at least ``margin`` times as similar as its
        ``reference``-th most similar image (when there are more than ``reference`` images), and at least
        ``min_cosine``."""
        count = len(distinct)
        if count < 2:
            return []
        vocabulary, columns = np.unique(
            np.concatenate([*distinct, np.zeros(0, np.int64)]), return_inverse=True
        )
        rows = np.repeat(np.arange(count), [len(bag) for bag in distinct])
        present = scipy.sparse.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, columns)), shape=(count, len(vocabulary))
        )
        frequency = np.asarray(present.sum(0)).ravel()
        shared = (frequency > 1) & (frequency <= max(self.reference, self.max_share * count))
        weight = np.where(shared, np.log(count / frequency), 0.0).astype(np.float32)
        weighted = present.multiply(weight).tocsr()  # words one image has cannot be shared: weight 0
        weighted.eliminate_zeros()
        norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(1)).ravel())
        norms[norms == 0] = np.inf
        unit = (scipy.sparse.diags(1 / norms) @ weighted).tocsr()
        unit_t = unit.T.tocsr()
        k = min(self.neighbours, count - 1)
        found = set()
        for start in range(0, count, chunk):
            cosine = (unit[start : start + chunk] @ unit_t).toarray()
            block = np.arange(len(cosine))
            cosine[block, start + block] = -1.0
            floor = np.full(len(cosine), self.min_cosine)
            if count > self.reference:  # fewer images: every neighbour above min_cosine is looked at
                kth = -np.partition(-cosine, self.reference - 1, axis=1)[:, self.reference - 1]
                floor = np.maximum(floor, self.margin * kth)
            nearest = np.argpartition(-cosine, k - 1, axis=1)[:, :k]
            kept = np.take_along_axis(cosine, nearest, 1) >= floor[:, None]
            for row, column in zip(*np.nonzero(kept), strict=True):
                i, j = start + int(row), int(nearest[row, column])
                found.add((min(i, j), max(i, j)))
        return sorted(found)

    def agreeing(self, first: WordBag, second: WordBag) -> int:
        """How many of the words ``first`` (as it is) shares with ``second`` (as it is, or mirrored) lie
        where one similarity transform puts them (RANSAC, seeded), one per point of ``first``."""
        upright = ~first.mirrored
        words, points = first.words[upright], first.points[upright]
        best = 0
        for flipped in (False, True):
            other = second.mirrored == flipped
            _, mine, theirs = np.intersect1d(words, second.words[other], return_indices=True)
            pairs = np.unique(
                np.concatenate([points[mine], second.points[other][theirs]], axis=1).astype(np.float32),
                axis=0,
            )
            pairs = pairs[np.unique(pairs[:, :2], axis=0, return_index=True)[1]]
            if len(pairs) < max(3, self.min_agreeing, best + 1):
                continue
            transform, agree = fitted_similarity(pairs[:, 2:], pairs[:, :2], self.tolerance)
            if transform is not None and plausible_scale(transform):
                best = max(best, agree)
        return best
