"""Training batches: caption pairs with their text inputs, and a collator that gathers their images as uint8
pixels.

Typical use on one split of the RSITR schema::

    text_inputs = TextInputs(processor.tokenizer)                     # or the method's kind
    pixels = cached_pixels(split, processor.image_processor)          # or DecodedPixels(split, ...)
    pairs = caption_pairs(split, text_inputs)
    collate = RetrievalCollator(pixels, text_inputs)
    loader = DataLoader(pairs, batch_size=256, shuffle=True, collate_fn=collate)

Each batch is a dict with ``pixels`` ``(B, 3, H, W)`` uint8, ``text`` (the text tower's inputs, padded to the
batch's longest caption: ``input_ids``, ``attention_mask`` and whatever else the method's text inputs give),
``image_ids`` ``(B,)`` and ``pair_index`` (a list of ``B`` ints). On the device, :class:`ImageBatchTransform`
turns ``pixels`` into the model's ``pixel_values`` (augmentation, then CLIP normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import torch

from .augmentation import RandomResizedCropFlip
from .loading import explode_captions
from .pixels import PixelNormalizer, PixelSource
from .randaugment import RandAugment
from .release_augment import ReleaseRandomAugment
from .text_inputs import TextInputs

PAIR_COLUMNS = ("image_row", "image_id", "pair_index")
ENCODE_CHUNK = 10_000  # captions encoded at a time


def caption_pairs(split: datasets.Dataset, text_inputs: TextInputs) -> datasets.Dataset:
    """One row per caption of ``split``, its text inputs encoded once (unpadded): ``image_row``, ``image_id``,
    ``pair_index`` and the inputs of ``text_inputs`` (``input_ids`` ...). The images stay out of the rows:
    :class:`RetrievalCollator` fetches them by ``image_row``."""
    pairs = explode_captions(
        split.remove_columns([c for c in ("image", "filename") if c in split.column_names])
    )
    captions = pairs["caption"]
    encoded: dict[str, list] = {}
    for start in range(0, len(captions), ENCODE_CHUNK):
        for key, rows in text_inputs.encode(captions[start : start + ENCODE_CHUNK]).items():
            encoded.setdefault(key, []).extend(rows)
    columns = {column: pairs[column] for column in PAIR_COLUMNS}
    return datasets.Dataset.from_dict({**columns, **encoded})


@dataclass
class RetrievalCollator:
    """Gather a batch of caption pairs: their images from ``pixels`` (uint8) and their text inputs, padded by
    ``text_inputs`` (to the batch's longest caption)."""

    pixels: PixelSource
    text_inputs: TextInputs

    def __call__(self, examples: list[dict]) -> dict:
        features = self.text_inputs.padding()
        return {
            "pixels": self.gather_pixels([example["image_row"] for example in examples]),
            "text": self.text_inputs.collate(
                [{key: example[key] for key in features} for example in examples]
            ),
            "image_ids": torch.tensor([example["image_id"] for example in examples], dtype=torch.long),
            # a list, not a tensor: it stays on the host, where the augmentation draws its crops
            "pair_index": [example["pair_index"] for example in examples],
        }

    def gather_pixels(self, rows: list[int]) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 of the images at ``rows``; in a data-loader worker, written straight into
        shared memory (as ``default_collate`` does) so that handing the batch over copies nothing."""
        shape = (len(rows), *self.pixels.shape)
        if torch.utils.data.get_worker_info() is None:
            pixels = torch.empty(shape, dtype=torch.uint8)
        else:
            storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(math.prod(shape))
            pixels = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        self.pixels.take(rows, out=pixels.numpy())
        return pixels


@dataclass
class ImageBatchTransform:
    """On the device: uint8 ``(B, 3, H, W)`` pixels -> the model's float ``pixel_values``, with the training
    augmentation (drawn per ``(seed, epoch, pair_index)``) when there is one, then CLIP's normalisation."""

    normalizer: PixelNormalizer
    augmentation: RandomResizedCropFlip | None = None
    rand_augment: ReleaseRandomAugment | RandAugment | None = None  # after the crop and flip, as the releases

    def __call__(
        self, pixels: torch.Tensor, indices: Sequence[int] | None = None, epoch: int = 0
    ) -> torch.Tensor:
        for augmentation in (self.augmentation, self.rand_augment):
            if augmentation is not None:
                if indices is None:
                    raise ValueError("augmentation needs each example's index (the batch's pair_index)")
                pixels = augmentation(pixels.float(), indices, epoch)
        return self.normalizer(pixels)
