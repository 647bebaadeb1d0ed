"""Preprocessing for training: ``with_transform`` transforms and a collator that pads text per batch.

Typical use on the one-row-per-caption view::

    pairs = explode_captions(dataset_dict["train"]).with_transform(CaptionPairTransform(processor))
    loader = DataLoader(pairs, batch_size=16, shuffle=True, collate_fn=RetrievalCollator(processor.tokenizer))

Each batch is a dict with ``pixel_values`` ``(B, 3, H, W)``, ``input_ids`` and ``attention_mask``
``(B, L)`` with ``L`` the longest caption of the batch, and ``image_ids`` ``(B,)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import PIL.Image
import torch

from .images import to_rgb


@dataclass
class RandomResizedCropFlip:
    """Train-time augmentation on PIL images: a random crop of ``scale`` of the area, resized back to
    the original size, and a horizontal flip with probability ``flip_probability``."""

    scale: tuple[float, float] = (0.5, 1.0)
    flip_probability: float = 0.5
    seed: int | None = None

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def __call__(self, image: PIL.Image.Image) -> PIL.Image.Image:
        width, height = image.size
        area_share = self.rng.uniform(*self.scale)
        crop_w = max(1, round(width * area_share**0.5))
        crop_h = max(1, round(height * area_share**0.5))
        left = self.rng.randint(0, width - crop_w)
        top = self.rng.randint(0, height - crop_h)
        image = image.resize((width, height), PIL.Image.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
        if self.rng.random() < self.flip_probability:
            image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        return image


def pixel_values(image_processor, images: list[PIL.Image.Image]) -> torch.Tensor:
    """``(N, 3, H, W)`` CLIP-normalised pixels of ``images`` (converted to RGB first)."""
    return image_processor(images=[to_rgb(image) for image in images], return_tensors="pt")["pixel_values"]


@dataclass
class CaptionPairTransform:
    """``with_transform`` for caption rows: image -> ``pixel_values``, caption -> unpadded ``input_ids``.

    Args:
        processor: a ``CLIPProcessor`` (its ``image_processor`` and ``tokenizer`` are used).
        max_length: captions are truncated to this many tokens (CLIP: 77).
        augmentation: optional PIL -> PIL function applied to each image before preprocessing.
    """

    processor: object
    max_length: int = 77
    augmentation: Callable[[PIL.Image.Image], PIL.Image.Image] | None = None

    def __call__(self, batch: dict) -> dict:
        images = [to_rgb(image) for image in batch["image"]]
        if self.augmentation is not None:
            images = [self.augmentation(image) for image in images]
        encoded = self.processor.tokenizer(batch["caption"], truncation=True, max_length=self.max_length)
        return {
            "pixel_values": list(pixel_values(self.processor.image_processor, images)),
            "input_ids": encoded["input_ids"],
            "image_id": batch["image_id"],
        }


@dataclass
class RetrievalCollator:
    """Stack images and pad captions to the longest one in the batch."""

    tokenizer: object

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        text = self.tokenizer.pad(
            {"input_ids": [example["input_ids"] for example in examples]},
            padding="longest",
            return_tensors="pt",
        )
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "image_ids": torch.tensor([example["image_id"] for example in examples], dtype=torch.long),
        }
