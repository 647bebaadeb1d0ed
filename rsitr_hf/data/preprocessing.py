"""Training batches: tokenised caption pairs and a collator that gathers their images as uint8 pixels.

Typical use on one split of the RSITR schema::

    pixels = cached_pixels(split, processor.image_processor)          # or DecodedPixels(split, ...)
    pairs = caption_pairs(split, processor.tokenizer)
    loader = DataLoader(pairs, batch_size=256, shuffle=True, collate_fn=RetrievalCollator(pixels, pad_id))

Each batch is a dict with ``pixels`` ``(B, 3, H, W)`` uint8, ``input_ids`` and ``attention_mask``
``(B, L)`` with ``L`` the longest caption of the batch, ``image_ids`` ``(B,)``, ``pair_index`` (a list
of ``B`` ints) and the POS inputs for POSAPL. On the device, :class:`ImageBatchTransform` turns ``pixels``
into the model's ``pixel_values`` (augmentation, then CLIP normalisation).
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
from .pos import PAD_TAG_ID
from .randaugment import RandAugment
from .release_augment import ReleaseRandomAugment

PAIR_COLUMNS = ("image_row", "image_id", "pair_index", "input_ids", "pos_input_ids", "pos_tag_ids")


def caption_pairs(
    split: datasets.Dataset, tokenizer, pos_mode: str | None = None, max_length: int = 77
) -> datasets.Dataset:
    """One row per caption of ``split``, tokenised once: ``image_row``, ``image_id``, ``pair_index``,
    ``input_ids`` (unpadded, truncated to ``max_length``) and, for POSAPL, ``pos_input_ids`` (the tokenised
    POS sentence, ``pos_mode="sentence"``) or ``pos_tag_ids`` (``"aligned"``).

    For POSAPL (``pos_mode`` set) the text is the normalised ``pos_caption``; otherwise ``caption``.
    The images stay out of the rows: :class:`RetrievalCollator` fetches them by ``image_row``.
    """
    pairs = explode_captions(
        split.remove_columns([c for c in ("image", "filename") if c in split.column_names])
    )
    text_column = "caption" if pos_mode is None else "pos_caption"

    def tokenize(batch: dict) -> dict:
        encoded = {
            "input_ids": tokenizer(batch[text_column], truncation=True, max_length=max_length)["input_ids"]
        }
        if pos_mode == "sentence":
            sentences = tokenizer(batch["pos_sentence"], truncation=True, max_length=max_length)
            encoded["pos_input_ids"] = sentences["input_ids"]
        return encoded

    keep = set(PAIR_COLUMNS) - ({"pos_tag_ids"} if pos_mode != "aligned" else set())
    tokenized = pairs.map(tokenize, batched=True, batch_size=1000, desc="tokenising captions")
    return tokenized.remove_columns([column for column in tokenized.column_names if column not in keep])


def pad_sequences(sequences: list[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    """``(N, length)`` tensor of ``sequences`` right-padded with ``value`` (default: to the longest)."""
    length = length or max(len(sequence) for sequence in sequences)
    return torch.tensor(
        [list(sequence[:length]) + [value] * (length - len(sequence)) for sequence in sequences]
    )


def pos_text_inputs(dataset: datasets.Dataset, tokenizer, pos_mode: str, max_length: int = 77):
    """A ``texts -> model inputs`` builder for :func:`rsitr_hf.evaluation.encode_split` on a POSAPL model.

    ``texts`` are normalised captions from ``dataset["pos_captions"]``; their POS inputs are looked up
    in the same rows (``pos_input_ids`` of the POS sentence, or the aligned ``pos_tag_ids``).
    """
    lookup = {}
    for captions, sentences, tag_ids in zip(
        dataset["pos_captions"], dataset["pos_sentences"], dataset["pos_tag_ids"], strict=True
    ):
        lookup.update(zip(captions, zip(sentences, tag_ids, strict=True), strict=True))

    def build(texts: Sequence[str]) -> dict:
        encoded = dict(
            tokenizer(
                list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
            )
        )
        if pos_mode == "sentence":
            sentences = [lookup[text][0] for text in texts]
            encoded["pos_input_ids"] = tokenizer(
                sentences, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
            )["input_ids"]
        else:
            encoded["pos_tag_ids"] = pad_sequences(
                [lookup[text][1] for text in texts], PAD_TAG_ID, length=encoded["input_ids"].shape[1]
            )
        return encoded

    return build


@dataclass
class RetrievalCollator:
    """Gather a batch of caption pairs: their images from ``pixels`` (uint8) and their captions padded to
    the longest one in the batch.

    POS inputs, when present, are padded too: ``pos_input_ids`` with ``pad_token_id`` to their longest,
    ``pos_tag_ids`` with ``PAD_TAG_ID`` to the caption length.
    """

    pixels: PixelSource
    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = pad_sequences([example["input_ids"] for example in examples], self.pad_token_id)
        lengths = torch.tensor([len(example["input_ids"]) for example in examples])
        batch = {
            "pixels": self.gather_pixels([example["image_row"] for example in examples]),
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long(),
            "image_ids": torch.tensor([example["image_id"] for example in examples], dtype=torch.long),
            # a list, not a tensor: it stays on the host, where the augmentation draws its crops
            "pair_index": [example["pair_index"] for example in examples],
        }
        if "pos_input_ids" in examples[0]:
            batch["pos_input_ids"] = pad_sequences([e["pos_input_ids"] for e in examples], self.pad_token_id)
        if "pos_tag_ids" in examples[0]:
            batch["pos_tag_ids"] = pad_sequences(
                [e["pos_tag_ids"] for e in examples], PAD_TAG_ID, length=input_ids.shape[1]
            )
        return batch

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
