"""RandAugment (Cubuk et al., 2020) as torchvision's ``RandAugment(num_ops, magnitude)`` defines it, batched
on the device and drawn per example from ``(seed, epoch, index)`` like :mod:`rsitr_hf.data.augmentation`.

Each example applies ``num_ops`` operations, each chosen uniformly from ``OPERATIONS`` (repeats allowed),
with torchvision's magnitude of bin ``magnitude`` out of ``num_bins`` (31) and, for the signed ones, a
random sign. Images are float ``(B, 3, H, W)`` in ``[0, 255]``; as torchvision on uint8 images, each
operation's result is an integer image (values floored, as a uint8 cast does). Geometric operations sample
the nearest pixel and fill with 0, with torchvision's affine matrices (shears about the top-left corner,
rotations about the centre) and its sampling grid; colour operations use its arithmetic, in its order.
Every operation gives exactly what ``torchvision.transforms.v2.functional`` gives on the uint8 image
(tested where torchvision is installed). Magnitudes at 7 of 31: shear 0.07 (x or y, ±), translation
±14.2 % of the side, rotation ±7°, brightness / colour / contrast / sharpness factor 1 ± 0.21, posterize to
7 bits, solarize above 195.5. Differences from torchvision's pipeline: pixels are rounded once before the
first operation (the crop's bilinear resize gives fractions, where torchvision's PIL pipeline gives uint8),
and a translation is a whole number of pixels as there, but applied to the cached image size.
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
    operation on the images that drew it with the same signed magnitude (two groups at most, ``+-m``)."""
    out = images.clone()
    geometric = [b for b, (name, _) in enumerate(operations) if name in GEOMETRIC]
    if geometric:
        matrices = [inverse_affine_of(*operations[b], *images.shape[-2:]) for b in geometric]
        out[geometric] = warp_nearest(images[geometric], matrices)
    for name, value in dict.fromkeys(operations):
        if name in COLOUR_OPERATIONS:
            chosen = [b for b, drawn in enumerate(operations) if drawn == (name, value)]
            out[chosen] = COLOUR_OPERATIONS[name](images[chosen], value)
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
    """Each image resampled through its inverse matrix as torchvision's ``_affine_grid`` does it (output pixel
    centres in centred coordinates, the matrix scaled to the grid's ``[-1, 1]`` first), nearest input pixel,
    0 outside."""
    batch, _, height, width = images.shape
    device = images.device
    theta = torch.tensor(matrices, dtype=torch.float32, device=device).view(batch, 2, 3)
    base = torch.empty(1, height, width, 3, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(
        torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device).unsqueeze_(-1)
    )
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2).div(torch.tensor([0.5 * width, 0.5 * height], device=device))
    grid = base.view(1, height * width, 3).expand(batch, -1, -1).bmm(scaled).view(batch, height, width, 2)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


# --- Colour operations, as torchvision's tensor functions on uint8 images, with its arithmetic ----------
# (each takes the images that drew it with one signed magnitude, a float, as torchvision takes one factor)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)``: ITU-R 601-2 luma, floored as torchvision's uint8 ``rgb_to_grayscale`` (computed with
    its operations, in its order)."""
    red, green, blue = images.unbind(dim=1)
    return red.mul(0.2989).add_(green, alpha=0.587).add_(blue, alpha=0.114).floor_().unsqueeze(1)


def blend(images: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's ``_blend``: ``images * factor + other * (1 - factor)``, clamped, floored."""
    return images.mul(factor).add_(other, alpha=1.0 - factor).clamp_(0, 255).floor_()


def brightness(images: torch.Tensor, value: float) -> torch.Tensor:
    return images.mul(1.0 + value).clamp_(0, 255).floor_()


def color(images: torch.Tensor, value: float) -> torch.Tensor:
    return blend(images, grayscale(images), 1.0 + value)


def contrast(images: torch.Tensor, value: float) -> torch.Tensor:
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return blend(images, mean, 1.0 + value)


def sharpness(images: torch.Tensor, value: float) -> torch.Tensor:
    """torchvision's sharpness: inside the 1-pixel border, ``x + (1 - factor) * (blur - x)`` with ``blur`` the
    image smoothed by its 3x3 kernel (centre 5, others 1, /13) and rounded; the border stays the image's."""
    kernel = torch.full((3, 1, 3, 3), 1.0 / 13.0, dtype=images.dtype, device=images.device)
    kernel[:, :, 1, 1] = 5.0 / 13.0
    smoothed = F.conv2d(images, kernel, groups=3).round_()
    out = images.clone()
    inner = out[..., 1:-1, 1:-1]
    inner.add_(smoothed.sub_(inner), alpha=1.0 - (1.0 + value))
    return out.clamp_(0, 255).floor_()


def posterize(images: torch.Tensor, value: float) -> torch.Tensor:
    step = 2.0 ** (8 - value)
    return (images / step).floor() * step


def solarize(images: torch.Tensor, value: float) -> torch.Tensor:
    return torch.where(images >= value, 255.0 - images, images)


def autocontrast(images: torch.Tensor, value: float) -> torch.Tensor:
    """Each channel stretched from its minimum and maximum to 0 and 255, divided by ``(max - min) / 255`` as
    torchvision does (a flat channel is kept)."""
    low = images.amin(dim=(-2, -1), keepdim=True)
    high = images.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    inverse_scale = torch.where(flat, torch.ones_like(high), (high - low) * (1.0 / 255))
    low = torch.where(flat, torch.zeros_like(low), low)
    return ((images - low) / inverse_scale).clamp(0, 255).floor()


def equalize(images: torch.Tensor, value: float) -> torch.Tensor:
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
