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
    the original size, and a horizontal flip with probability ``flip_probability``.

    The randomness of an example is a function of ``(seed, epoch, index)`` only, not of any global
    generator state, so a resumed run sees exactly the crops an uninterrupted one would (Accelerate's
    data loader fetches a batch ahead, which would otherwise shift a shared generator). The training
    loop sets ``epoch`` at the start of each epoch.
    """

    scale: tuple[float, float] = (0.5, 1.0)
    flip_probability: float = 0.5
    seed: int = 0
    epoch: int = 0

    def __call__(self, image: PIL.Image.Image, index: int) -> PIL.Image.Image:
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        width, height = image.size
        area_share = rng.uniform(*self.scale)
        crop_w = max(1, round(width * area_share**0.5))
        crop_h = max(1, round(height * area_share**0.5))
        left = rng.randint(0, width - crop_w)
        top = rng.randint(0, height - crop_h)
        image = image.resize((width, height), PIL.Image.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
        if rng.random() < self.flip_probability:
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
        augmentation: optional ``(image, pair_index) -> image`` function applied before preprocessing
            (e.g. :class:`RandomResizedCropFlip`; ``pair_index`` comes from :func:`explode_captions`).
        pos_mode: for POSAPL, ``"sentence"`` or ``"aligned"``: the text is the normalised
            ``pos_caption`` and the POS input (``pos_input_ids`` of the ``pos_sentence``, or the
            ``pos_tag_ids``) is added; ``None`` for the other methods (text: ``caption``).
    """

    processor: object
    max_length: int = 77
    augmentation: Callable[[PIL.Image.Image, int], PIL.Image.Image] | None = None
    pos_mode: str | None = None

    def __call__(self, batch: dict) -> dict:
        images = [to_rgb(image) for image in batch["image"]]
        if self.augmentation is not None:
            images = [
                self.augmentation(image, index)
                for image, index in zip(images, batch["pair_index"], strict=True)
            ]
        text = batch["caption"] if self.pos_mode is None else batch["pos_caption"]
        encoded = self.processor.tokenizer(text, truncation=True, max_length=self.max_length)
        features = {
            "pixel_values": list(pixel_values(self.processor.image_processor, images)),
            "input_ids": encoded["input_ids"],
            "image_id": batch["image_id"],
        }
        if self.pos_mode == "sentence":
            sentences = self.processor.tokenizer(
                batch["pos_sentence"], truncation=True, max_length=self.max_length
            )
            features["pos_input_ids"] = sentences["input_ids"]
        elif self.pos_mode == "aligned":
            features["pos_tag_ids"] = batch["pos_tag_ids"]
        return features


def pad_sequences(sequences: list[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    """``(N, length)`` tensor of ``sequences`` right-padded with ``value`` (default: to the longest)."""
    length = length or max(len(sequence) for sequence in sequences)
    return torch.tensor(
        [list(sequence[:length]) + [value] * (length - len(sequence)) for sequence in sequences]
    )


@dataclass
class RetrievalCollator:
    """Stack images and pad captions to the longest one in the batch.

    POS inputs, when present, are padded too: ``pos_input_ids`` with the tokenizer's pad token to their
    longest, ``pos_tag_ids`` with ``PAD_TAG_ID`` to the caption length.
    """

    tokenizer: object

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from .pos import PAD_TAG_ID

        text = self.tokenizer.pad(
            {"input_ids": [example["input_ids"] for example in examples]},
            padding="longest",
            return_tensors="pt",
        )
        batch = {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "image_ids": torch.tensor([example["image_id"] for example in examples], dtype=torch.long),
        }
        if "pos_input_ids" in examples[0]:
            pad = self.tokenizer.pad_token_id
            batch["pos_input_ids"] = pad_sequences([e["pos_input_ids"] for e in examples], pad)
        if "pos_tag_ids" in examples[0]:
            batch["pos_tag_ids"] = pad_sequences(
                [e["pos_tag_ids"] for e in examples], PAD_TAG_ID, length=batch["input_ids"].shape[1]
            )
        return batch
