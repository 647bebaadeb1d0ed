"""Training augmentation of image batches on the device, drawn per example from ``(seed, epoch, index)``.

Each example's random choices come from ``random.Random(f"{seed}:{epoch}:{index}")`` (``index``: the
caption pair's stable ``pair_index``), never from a shared generator, so a resumed run, a run with more
data-loader workers or on another device sees the same crops as an uninterrupted one. The choices are
cheap Python draws made per batch; the pixel work is one batched ``grid_sample`` on the device.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CropBox:
    """A crop of an ``H x W`` image in pixels (``top``, ``left``, ``height``, ``width``) and whether the
    result is mirrored left-right."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


@dataclass
class RandomResizedCropFlip:
    """torchvision's ``RandomResizedCrop(size, scale, ratio)`` followed by ``RandomHorizontalFlip(p)``, for a
    batch of ``(B, 3, H, W)`` images, resized back to ``H x W`` with bilinear interpolation.

    The crop boxes are drawn exactly as torchvision draws them (10 tries of area share in ``scale`` and
    log-uniform aspect ratio in ``ratio``, then a centre crop), in pixels of the cached ``H x W`` image.
    Crops never exceed the image, so the resize only enlarges and needs no anti-aliasing.

    Args:
        scale: range of the crop's share of the image area (POSAPL: 0.5 to 1).
        ratio: range of the crop's aspect ratio (width / height).
        flip_probability: probability of mirroring the crop left-right.
        seed: the run's seed; the epoch and the example index come with each call.
    """

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    seed: int = 0

    def box(self, index: int, epoch: int, height: int, width: int) -> CropBox:
        """The crop of example ``index`` in ``epoch`` of an ``height x width`` image."""
        rng = random.Random(f"{self.seed}:{epoch}:{index}")
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = rng.randint(0, height - crop_h)
                left = rng.randint(0, width - crop_w)
                break
        else:
            crop_h, crop_w = centre_crop_size(height, width, self.ratio)
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return CropBox(top, left, crop_h, crop_w, rng.random() < self.flip_probability)

    def __call__(self, pixels: torch.Tensor, indices: Sequence[int], epoch: int) -> torch.Tensor:
        """``(B, 3, H, W)`` float images -> their augmented ``(B, 3, H, W)`` on the same device."""
        height, width = pixels.shape[-2:]
        boxes = [self.box(int(index), epoch, height, width) for index in indices]
        return crop_resize_flip(pixels, boxes)


def centre_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback crop: the whole image, narrowed to the nearest allowed aspect ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return round(width / min(ratio)), width
    if in_ratio > max(ratio):
        return height, round(height * max(ratio))
    return height, width


def crop_resize_flip(pixels: torch.Tensor, boxes: Sequence[CropBox]) -> torch.Tensor:
    """Each image's box resized to the full ``H x W``, mirrored where the box says so: what
    ``F.interpolate(image[..., box], (H, W), mode="bilinear", align_corners=False)`` (torchvision's resize
    when enlarging) then a flip give, for the whole batch in one ``grid_sample``."""
    batch, _, height, width = pixels.shape
    rows = [
        [
            box.width / width * (-1.0 if box.flip else 1.0), 0.0, (2 * box.left + box.width) / width - 1,
            0.0, box.height / height, (2 * box.top + box.height) / height - 1,
        ]
        for box in boxes
    ]  # fmt: skip
    theta = torch.tensor(rows, dtype=torch.float32).view(batch, 2, 3).to(pixels.device)
    grid = F.affine_grid(theta, [batch, 1, height, width], align_corners=False)
    # like interpolating the cropped tensor: samples stay between the box's outermost pixel centres
    bounds = [
        [(2 * box.left + 1) / width - 1, (2 * box.top + 1) / height - 1,
         (2 * (box.left + box.width) - 1) / width - 1, (2 * (box.top + box.height) - 1) / height - 1]
        for box in boxes
    ]  # fmt: skip
    bounds = torch.tensor(bounds, dtype=torch.float32).to(pixels.device).view(batch, 1, 1, 4)
    grid = torch.maximum(torch.minimum(grid, bounds[..., 2:]), bounds[..., :2])
    images = pixels if pixels.is_floating_point() else pixels.float()
    return F.grid_sample(
        images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
