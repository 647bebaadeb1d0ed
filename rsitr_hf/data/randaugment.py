"""RandAugment (Cubuk et al., 2020) as torchvision's ``RandAugment(num_ops, magnitude)`` defines it, batched
on the device and drawn per example from ``(seed, epoch, index)`` like :mod:`rsitr_hf.data.augmentation`.

Each example applies ``num_ops`` operations, each chosen uniformly from ``OPERATIONS`` (repeats allowed),
with torchvision's magnitude of bin ``magnitude`` out of ``num_bins`` (31) and, for the signed ones, a
random sign. Images are float ``(B, 3, H, W)`` in ``[0, 255]``; as torchvision on uint8 images, each
operation's result is an integer image (values floored, as a uint8 cast does). Geometric operations sample
the nearest pixel and fill with 0, with torchvision's affine matrices (shears about the top-left corner,
rotations about the centre). Magnitudes at 7 of 31: shear 0.07 (x or y, ±), translation ±14.2 % of the
side, rotation ±7°, brightness / colour / contrast / sharpness factor 1 ± 0.21, posterize to 7 bits,
solarize above 195.5. Differences from torchvision: pixels are rounded once before the first operation
(the crop's bilinear resize gives fractions, where torchvision's PIL pipeline gives uint8), and a
translation is a whole number of pixels as there, but applied to the cached image size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPERATIONS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
    "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)  # fmt: skip
SIGNED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                    "Contrast", "Sharpness"})  # fmt: skip
GEOMETRIC = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})


def operation_magnitude(name: str, magnitude: int, num_bins: int, height: int, width: int) -> float:
    """torchvision's ``_augmentation_space(num_bins, (height, width))`` value of bin ``magnitude``."""
    fraction = magnitude / (num_bins - 1)
    if name in ("ShearX", "ShearY"):
        return 0.3 * fraction
    if name == "TranslateX":
        return 150.0 / 331.0 * width * fraction
    if name == "TranslateY":
        return 150.0 / 331.0 * height * fraction
    if name == "Rotate":
        return 30.0 * fraction
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return 0.9 * fraction
    if name == "Posterize":
        return float(8 - round(magnitude / ((num_bins - 1) / 4)))
    if name == "Solarize":
        return 255.0 * (1 - fraction)
    return 0.0


@dataclass(frozen=True)
class RandAugment:
    """``RandAugment(num_ops, magnitude)`` for a batch, each example's draws from ``(seed, epoch, index)``.

    Args:
        num_ops: operations per image (POSAPL: 2).
        magnitude: the magnitude bin (POSAPL: 7).
        num_bins: torchvision's number of magnitude bins (31).
        seed: the run's seed; the epoch and the example index come with each call.
    """

    num_ops: int = 2
    magnitude: int = 7
    num_bins: int = 31
    seed: int = 0

    def draws(self, index: int, epoch: int, height: int, width: int) -> list[tuple[str, float]]:
        """The ``(operation, signed magnitude)`` pairs of example ``index`` in ``epoch``."""
        rng = random.Random(f"randaugment:{self.seed}:{epoch}:{index}")
        chosen = []
        for _ in range(self.num_ops):
            name = OPERATIONS[rng.randrange(len(OPERATIONS))]
            value = operation_magnitude(name, self.magnitude, self.num_bins, height, width)
            if name in SIGNED and rng.random() < 0.5:
                value = -value
            chosen.append((name, value))
        return chosen

    def __call__(self, pixels: torch.Tensor, indices: Sequence[int], epoch: int) -> torch.Tensor:
        """``(B, 3, H, W)`` float images in ``[0, 255]`` -> the augmented images, integer-valued."""
        height, width = pixels.shape[-2:]
        draws = [self.draws(int(index), epoch, height, width) for index in indices]
        images = pixels.float().round().clamp(0, 255)
        for slot in range(self.num_ops):
            images = apply_operations(images, [chosen[slot] for chosen in draws])
        return images


def apply_operations(images: torch.Tensor, operations: Sequence[tuple[str, float]]) -> torch.Tensor:
    """Apply ``operations[b]`` to image ``b``: one batched warp for the geometric ones, then each colour
    operation on the images that drew it."""
    out = images.clone()
    geometric = [b for b, (name, _) in enumerate(operations) if name in GEOMETRIC]
    if geometric:
        matrices = [inverse_affine_of(*operations[b], *images.shape[-2:]) for b in geometric]
        out[geometric] = warp_nearest(images[geometric], matrices)
    for name in {name for name, _ in operations} - GEOMETRIC - {"Identity"}:
        chosen = [b for b, (drawn, _) in enumerate(operations) if drawn == name]
        magnitudes = torch.tensor(
            [operations[b][1] for b in chosen], dtype=images.dtype, device=images.device
        )
        out[chosen] = COLOUR_OPERATIONS[name](images[chosen], magnitudes.view(-1, 1, 1, 1))
    return out


# --- Geometric operations: torchvision's inverse affine matrices, nearest sampling, fill 0 -------------


def inverse_affine(
    angle: float, translate: tuple[float, float], shear: tuple[float, float], center: tuple[float, float]
) -> list[float]:
    """torchvision's ``_get_inverse_affine_matrix`` (scale 1): the 2x3 matrix taking an output pixel, in
    coordinates centred on the image, to the input point it samples."""
    rotation, shear_x, shear_y = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rotation - shear_y) / math.cos(shear_y)
    b = -math.cos(rotation - shear_y) * math.tan(shear_x) / math.cos(shear_y) - math.sin(rotation)
    c = math.sin(rotation - shear_y) / math.cos(shear_y)
    d = -math.sin(rotation - shear_y) * math.tan(shear_x) / math.cos(shear_y) + math.cos(rotation)
    matrix = [d, -b, 0.0, -c, a, 0.0]
    matrix[2] += matrix[0] * (-cx - tx) + matrix[1] * (-cy - ty)
    matrix[5] += matrix[3] * (-cx - tx) + matrix[4] * (-cy - ty)
    matrix[2] += cx
    matrix[5] += cy
    return matrix


def inverse_affine_of(name: str, value: float, height: int, width: int) -> list[float]:
    """The matrix of a geometric RandAugment operation, with the arguments torchvision passes: shears and
    translations about the top-left corner (``center=[0, 0]``), rotations about the centre."""
    corner = (-width * 0.5, -height * 0.5)  # torchvision's center [0, 0], in centred coordinates
    if name == "ShearX":
        return inverse_affine(0.0, (0, 0), (math.degrees(math.atan(value)), 0.0), corner)
    if name == "ShearY":
        return inverse_affine(0.0, (0, 0), (0.0, math.degrees(math.atan(value))), corner)
    if name == "TranslateX":
        return inverse_affine(0.0, (int(value), 0), (0.0, 0.0), corner)
    if name == "TranslateY":
        return inverse_affine(0.0, (0, int(value)), (0.0, 0.0), corner)
    return inverse_affine(-value, (0, 0), (0.0, 0.0), (0.0, 0.0))  # Rotate: F.rotate negates the angle


def warp_nearest(images: torch.Tensor, matrices: Sequence[list[float]]) -> torch.Tensor:
    """Each image resampled through its inverse matrix (torchvision's ``_gen_affine_grid``): output pixel
    centres in centred coordinates, nearest input pixel, 0 outside."""
    batch, _, height, width = images.shape
    device = images.device
    theta = torch.tensor(matrices, dtype=torch.float32, device=device).view(batch, 2, 3)
    xs = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) * 0.5
    ys = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) * 0.5
    base = torch.stack(
        [
            xs.expand(height, width),
            ys[:, None].expand(height, width),
            torch.ones(height, width, device=device),
        ],
        dim=-1,
    )  # (H, W, 3)
    points = torch.einsum("hwk,bjk->bhwj", base, theta)  # (B, H, W, 2), input points in centred coordinates
    grid = points / torch.tensor([0.5 * width, 0.5 * height], device=device)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# --- Colour operations, as torchvision's tensor functions on uint8 images ------------------------------


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)``: ITU-R 601-2 luma, floored as torchvision's uint8 ``rgb_to_grayscale``."""
    red, green, blue = images.unbind(dim=1)
    return (0.2989 * red + 0.587 * green + 0.114 * blue).floor().unsqueeze(1)


def blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * images + (1.0 - factor) * other).clamp(0, 255).floor()


def brightness(images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return blend(images, torch.zeros_like(images), 1.0 + value)


def color(images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return blend(images, grayscale(images), 1.0 + value)


def contrast(images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return blend(images, mean, 1.0 + value)


def sharpness(images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Blend with the image smoothed by torchvision's 3x3 kernel (centre 5, others 1, /13, rounded),
    whose border pixels stay the image's."""
    kernel = torch.ones(3, 1, 3, 3, dtype=images.dtype, device=images.device)
    kernel[:, :, 1, 1] = 5.0
    smoothed = F.conv2d(images, kernel / 13.0, groups=3).round().clamp(0, 255)
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = smoothed
    return blend(images, degenerate, 1.0 + value)


def posterize(images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    step = 2.0 ** (8 - value)
    return (images / step).floor() * step


def solarize(images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.where(images >= value, 255.0 - images, images)


def autocontrast(images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Each channel stretched from its minimum and maximum to 0 and 255 (a flat channel is kept)."""
    low = images.amin(dim=(-2, -1), keepdim=True)
    high = images.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    scale = torch.where(flat, torch.ones_like(high), 255.0 / (high - low))
    low = torch.where(flat, torch.zeros_like(low), low)
    return ((images - low) * scale).clamp(0, 255).floor()


def equalize(images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """torchvision's per-channel histogram equalisation (``_equalize_single_image``), for every channel of
    the batch at once: ``step`` is the pixel count without the last used level, over 255; a channel with
    ``step`` 0 is kept."""
    levels = images.long().flatten(2)  # (B, C, H*W)
    histogram = torch.zeros(*levels.shape[:2], 256, dtype=torch.long, device=images.device)
    histogram.scatter_add_(2, levels, torch.ones_like(levels))
    used = torch.arange(256, device=images.device).expand_as(histogram).masked_fill(histogram == 0, -1)
    last_count = histogram.gather(2, used.amax(dim=2, keepdim=True))
    step = torch.div(histogram.sum(dim=2, keepdim=True) - last_count, 255, rounding_mode="floor")
    lut = torch.div(
        torch.cumsum(histogram, 2) + torch.div(step, 2, rounding_mode="floor"), step.clamp(min=1),
        rounding_mode="floor",
    )  # fmt: skip
    lut = F.pad(lut, [1, 0])[..., :-1].clamp(0, 255)
    equalized = lut.gather(2, levels).to(images.dtype).view_as(images)
    return torch.where(step.view(*step.shape[:2], 1, 1) == 0, images, equalized)


COLOUR_OPERATIONS = {
    "Brightness": brightness, "Color": color, "Contrast": contrast, "Sharpness": sharpness,
    "Posterize": posterize, "Solarize": solarize, "AutoContrast": autocontrast, "Equalize": equalize,
}  # fmt: skip
