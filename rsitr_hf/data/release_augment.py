"""The HarMA and POSAPL releases' ``RandomAugment(2, 7)`` (``dataset/randaugment.py``, the same file in both
releases), batched on the device and drawn per example from ``(seed, epoch, index)`` like
:mod:`rsitr_hf.data.augmentation`.

This is not torchvision's RandAugment (:mod:`rsitr_hf.data.randaugment`). Each example draws ``num_ops``
operations with replacement from the release's ten (``OPERATIONS``), and applies each with probability 0.5.
Magnitudes come from the release's own table, ``level = magnitude / 10``:

- rotation ``±30·level`` degrees (±21° at 7), about the point ``(W/2, H/2)``;
- shear ``±0.3·level`` (±0.21);
- translation ``±10·level`` pixels (±7);
- brightness and sharpness factor ``1.8·level + 0.1`` (1.36, never below 1: both only enhance);
- geometric operations fill with grey (128).

Images are float ``(B, 3, H, W)`` in ``[0, 255]`` and stay integer-valued, as the release's uint8 arrays.
Each operation computes what the release's OpenCV/numpy code computes, and the tests check each against
OpenCV 4.8, the release's version, where it is installed:

- geometric operations are OpenCV's ``warpAffine`` with bilinear interpolation, in its fixed point
  (source coordinates in 1/32 pixel, weights in 1/32768);
- brightness is a floored table;
- sharpness blends with the 3×3 smoothed image (rounded) inside the 1-pixel border. The release converts
  the result to uint8 without clipping, so values past 0 or 255 wrap around as numpy's cast does them on
  x86: truncated, modulo 256. That wrap is kept;
- autocontrast stretches each channel from its minimum and maximum with a floored table, except that a
  channel whose minimum is above 0 becomes all 255 (the release negates a uint8 scalar, which wraps);
- equalisation is PIL's, the same as torchvision's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .randaugment import equalize

OPERATIONS = (
    "Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
)  # fmt: skip
GEOMETRIC = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})
MAX_LEVEL = 10
TRANSLATE_PIXELS = 10
FILL = 128.0
APPLY_PROBABILITY = 0.5


def operation_magnitude(name: str, magnitude: int) -> float:
    """The release's unsigned argument of ``name`` at ``magnitude`` (its ``arg_dict``)."""
    level = magnitude / MAX_LEVEL
    if name in ("Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    if name in ("ShearX", "ShearY"):
        return level * 0.3
    if name in ("TranslateX", "TranslateY"):
        return level * TRANSLATE_PIXELS
    if name == "Rotate":
        return level * 30
    return 0.0


@dataclass(frozen=True)
class ReleaseRandomAugment:
    """The releases' ``RandomAugment(num_ops, magnitude)`` for a batch, each example's draws from
    ``(seed, epoch, index)``.

    Args:
        num_ops: operations drawn per image, with replacement (releases: 2).
        magnitude: the level, out of 10 (releases: 7).
        seed: the run's seed; the epoch and the example index come with each call.
    """

    num_ops: int = 2
    magnitude: int = 7
    seed: int = 0

    def draws(self, index: int, epoch: int) -> list[tuple[str, float] | None]:
        """Per slot, the ``(operation, signed argument)`` of example ``index`` in ``epoch``, or ``None`` where
        the drawn operation is skipped (probability 0.5)."""
        rng = random.Random(f"release-randaugment:{self.seed}:{epoch}:{index}")
        chosen = []
        for _ in range(self.num_ops):
            name = OPERATIONS[rng.randrange(len(OPERATIONS))]
            if rng.random() > APPLY_PROBABILITY:
                chosen.append(None)
                continue
            value = operation_magnitude(name, self.magnitude)
            if name in GEOMETRIC and rng.random() < 0.5:
                value = -value
            chosen.append((name, value))
        return chosen

    def __call__(self, pixels: torch.Tensor, indices: Sequence[int], epoch: int) -> torch.Tensor:
        """``(B, 3, H, W)`` float images in ``[0, 255]`` -> the augmented images, integer-valued."""
        draws = [self.draws(int(index), epoch) for index in indices]
        images = pixels.float().round().clamp(0, 255)
        for slot in range(self.num_ops):
            images = apply_operations(images, [chosen[slot] for chosen in draws])
        return images


def apply_operations(images: torch.Tensor, operations: Sequence[tuple[str, float] | None]) -> torch.Tensor:
    """Apply ``operations[b]`` to image ``b`` (``None``: unchanged): one batched warp for the geometric ones,
    then each other operation on the images that drew it with the same argument."""
    out = images.clone()
    geometric = [b for b, drawn in enumerate(operations) if drawn is not None and drawn[0] in GEOMETRIC]
    if geometric:
        height, width = images.shape[-2:]
        matrices = [forward_matrix(*operations[b], height, width) for b in geometric]
        out[geometric] = warp_affine_bilinear(images[geometric], matrices, FILL)
    for drawn in dict.fromkeys(operations):
        if drawn is not None and drawn[0] in PIXEL_OPERATIONS:
            chosen = [b for b, other in enumerate(operations) if other == drawn]
            out[chosen] = PIXEL_OPERATIONS[drawn[0]](images[chosen], drawn[1])
    return out


# --- Geometric operations: OpenCV's warpAffine (INTER_LINEAR, constant border) in its fixed point ------

INTER_BITS = 5  # OpenCV: source coordinates in 1/32 pixel
AB_BITS = 10  # OpenCV: the matrix terms are rounded to 1/1024 first


def forward_matrix(name: str, value: float, height: int, width: int) -> list[list[float]]:
    """The 2x3 matrix the release passes to ``cv2.warpAffine`` (source pixel -> destination pixel): float32
    for shears and translations (the release builds them with ``np.float32``), float64 for rotations."""
    value = float32(value) if name != "Rotate" else value
    if name == "ShearX":
        return [[1.0, value, 0.0], [0.0, 1.0, 0.0]]
    if name == "ShearY":
        return [[1.0, 0.0, 0.0], [value, 1.0, 0.0]]
    if name == "TranslateX":
        return [[1.0, 0.0, -value], [0.0, 1.0, 0.0]]
    if name == "TranslateY":
        return [[1.0, 0.0, 0.0], [0.0, 1.0, -value]]
    # cv2.getRotationMatrix2D((W / 2, H / 2), value, 1): counter-clockwise for a positive angle
    alpha, beta = math.cos(math.radians(value)), math.sin(math.radians(value))
    cx, cy = width / 2, height / 2
    return [[alpha, beta, (1 - alpha) * cx - beta * cy], [-beta, alpha, beta * cx + (1 - alpha) * cy]]


def float32(value: float) -> float:
    """``value`` rounded to float32, as a Python float."""
    return torch.tensor(value, dtype=torch.float32).item()


def inverse_matrix(matrix: list[list[float]]) -> list[list[float]]:
    """``cv2.invertAffineTransform``: the matrix taking a destination pixel to the source point it samples."""
    (a, b, c), (d, e, f) = matrix
    determinant = a * e - b * d
    scale = 1.0 / determinant if determinant != 0 else 0.0
    a11, a22, a12, a21 = e * scale, a * scale, -b * scale, -d * scale
    return [[a11, a12, -a11 * c - a12 * f], [a21, a22, -a21 * c - a22 * f]]


def warp_affine_bilinear(
    images: torch.Tensor, matrices: Sequence[list[list[float]]], fill: float
) -> torch.Tensor:
    """``cv2.warpAffine(image, M, (W, H), flags=INTER_LINEAR, borderValue=fill)`` for each image and its
    forward matrix, as OpenCV 4.8 computes it for uint8 images.

    OpenCV rounds each matrix term to 1/1024 (``x·M00`` per column, ``y·M01 + M02`` per row), adds them with
    half of 1/32 and keeps 1/32 of a pixel. The four neighbours are weighted ``(32 - fx)(32 - fy)·32 …``
    (out of 32768), and the sum is rounded. Neighbours outside the image count as ``fill``."""
    batch, channels, height, width = images.shape
    device = images.device
    inverse = torch.tensor([inverse_matrix(m) for m in matrices], dtype=torch.float64, device=device)
    xs = torch.arange(width, dtype=torch.float64, device=device)
    ys = torch.arange(height, dtype=torch.float64, device=device)
    scale, half_step = float(1 << AB_BITS), 1 << (AB_BITS - INTER_BITS - 1)

    def fixed(row: int) -> torch.Tensor:  # (B, H, W) source coordinate in 1/32 pixel
        per_column = torch.round(inverse[:, row, 0, None] * xs * scale)
        per_row = torch.round((inverse[:, row, 1, None] * ys + inverse[:, row, 2, None]) * scale) + half_step
        return (per_row[:, :, None] + per_column[:, None, :]).long() >> (AB_BITS - INTER_BITS)

    x_fixed, y_fixed = fixed(0), fixed(1)
    x0, fx = x_fixed >> INTER_BITS, x_fixed & ((1 << INTER_BITS) - 1)
    y0, fy = y_fixed >> INTER_BITS, y_fixed & ((1 << INTER_BITS) - 1)
    padded = F.pad(images.double(), (1, 2, 1, 2), value=fill)  # neighbours up to one pixel outside
    flat = padded.flatten(2)  # (B, C, (H + 3) * (W + 3))
    total = torch.zeros(batch, channels, height, width, dtype=torch.float64, device=device)
    one = 1 << INTER_BITS
    for dy, wy in ((0, one - fy), (1, fy)):
        for dx, wx in ((0, one - fx), (1, fx)):
            column = (x0 + dx).clamp(-1, width) + 1  # beyond the padding: the fill anyway
            row = (y0 + dy).clamp(-1, height) + 1
            index = (row * (width + 3) + column).flatten(1)[:, None, :].expand(-1, channels, -1)
            weight = (wy * wx * one).to(torch.float64)[:, None]
            total += weight * flat.gather(2, index).view(batch, channels, height, width)
    return torch.floor((total + (1 << 14)) / (1 << 15)).clamp(0, 255).to(images.dtype)


# --- Pixel operations, with the release's numpy arithmetic --------------------------------------------


def identity(images: torch.Tensor, value: float) -> torch.Tensor:
    return images


def brightness(images: torch.Tensor, value: float) -> torch.Tensor:
    """The release's table ``(arange(256, float32) * factor).clip(0, 255)`` cast to uint8 (floored)."""
    return (images.float() * value).clamp(0, 255).floor().to(images.dtype)


def numpy_uint8_cast(values: torch.Tensor) -> torch.Tensor:
    """numpy's float32 -> uint8 cast on x86: truncated toward 0, then modulo 256 (no clipping)."""
    return torch.remainder(torch.trunc(values), 256)


def sharpness(images: torch.Tensor, value: float) -> torch.Tensor:
    """The release's sharpness: ``degenerate`` is ``cv2.filter2D`` with the 3x3 kernel (centre 5, others 1,
    /13), rounded to uint8; inside the 1-pixel border ``degenerate + factor * (image - degenerate)`` in
    float32, cast to uint8 by numpy (:func:`numpy_uint8_cast`); the border keeps the image."""
    if value == 1.0:
        return images
    kernel = torch.full((3, 1, 3, 3), 1.0, dtype=torch.float32, device=images.device)
    kernel[:, :, 1, 1] = 5.0
    kernel /= 13
    source = images.float()
    degenerate = F.conv2d(source, kernel, groups=3).round().clamp(0, 255)
    out = source.clone()
    inner = source[..., 1:-1, 1:-1]
    out[..., 1:-1, 1:-1] = numpy_uint8_cast(degenerate + value * (inner - degenerate))
    return out.to(images.dtype)


def autocontrast(images: torch.Tensor, value: float) -> torch.Tensor:
    """The release's autocontrast (cutoff 0): per channel, the table ``arange(256) * scale + offset`` with
    ``scale = 255 / (high - low)`` and ``offset = -low * scale`` (float64), clipped and floored; a flat
    channel is kept.

    ``low`` is a numpy uint8 scalar there, so ``-low`` wraps around to ``256 - low``: a channel whose
    minimum is above 0 comes out all 255 (the release silences numpy's "overflow encountered in scalar
    negative" warning). That is kept; a channel that reaches 0 is stretched as intended."""
    low = images.amin(dim=(-2, -1), keepdim=True).double()
    high = images.amax(dim=(-2, -1), keepdim=True).double()
    flat = high <= low
    scale = torch.full_like(high, 255.0) / torch.where(flat, torch.ones_like(high), high - low)
    offset = torch.remainder(-low, 256) * scale
    stretched = (images.double() * scale + offset).clamp(0, 255).floor()
    return torch.where(flat, images.double(), stretched).to(images.dtype)


PIXEL_OPERATIONS = {
    "Identity": identity, "AutoContrast": autocontrast, "Equalize": equalize,
    "Brightness": brightness, "Sharpness": sharpness,
}  # fmt: skip
