"""Embedding a split of the RSITR schema with any CLIP-like model (scored by :mod:`.scoring`).

Images reach the model as uint8 pixels (from a cache, or decoded in ``DataLoader`` workers) and are
normalised on the model's device; see :mod:`rsitr_hf.data.pixels`.

"CLIP-like" means it has ``get_image_features(pixel_values=...)`` and
``get_text_features(input_ids=..., attention_mask=...)`` returning either a tensor or an output whose
``pooler_output`` is the projected embedding: ``transformers.CLIPModel``, and any ``PeftModel`` on it.

Under several processes (``accelerate launch``), each process embeds a contiguous share of the batches
and the shares are gathered in order (:func:`rsitr_hf.utils.distributed.embed_batches`, the helper the
search index uses too), so no sample is duplicated or dropped, and every row comes from the same batch as
in a one-process run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F

from ..data.pixels import DecodedPixels, PixelNormalizer, PixelSource, resize_and_crop
from ..data.text_inputs import TextInputs
from ..utils.distributed import Shards, embed_batches


@dataclass
class RetrievalEmbeddings:
    """L2-normalised embeddings of one split.

    Attributes:
        image_embeds: ``(num_images, dim)``.
        text_embeds: ``(num_distinct_captions, dim)``, one row per distinct caption string.
        caption_text_index: ``(num_captions,)`` row of ``text_embeds`` for each caption, in dataset order.
        caption_image_ids: ``(num_captions,)`` image id of each caption.
        image_ids: ``(num_images,)`` id of each image row.
    """

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    caption_text_index: torch.Tensor
    caption_image_ids: torch.Tensor
    image_ids: torch.Tensor

    def similarity(self) -> torch.Tensor:
        """``(num_images, num_captions)`` cosine similarities."""
        return (self.image_embeds @ self.text_embeds.T)[:, self.caption_text_index]


def projected(output) -> torch.Tensor:
    """The projected embedding of a ``get_*_features`` result (tensor in v4, output object in v5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def pixel_embeddings(
    model: torch.nn.Module, normalizer: PixelNormalizer, pixels: torch.Tensor
) -> torch.Tensor:
    """``(N, D)`` unit-norm float32 embeddings of ``(N, 3, H, W)`` uint8 ``pixels`` (normalised on the model's
    device)."""
    pixel_values = normalizer(pixels.to(model_device(model), non_blocking=True))
    return F.normalize(projected(model.get_image_features(pixel_values=pixel_values)).float(), dim=-1)


def image_embeddings(model: torch.nn.Module, image_processor, images: list) -> torch.Tensor:
    """``(N, D)`` unit-norm float32 embeddings of PIL ``images`` (on the model's device)."""
    pixels = torch.from_numpy(resize_and_crop(image_processor, images))
    return pixel_embeddings(model, PixelNormalizer.from_processor(image_processor), pixels)


def text_embeddings(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """``(N, D)`` unit-norm float32 embeddings of tokenized captions (moved to the model's device)."""
    device = model_device(model)
    features = model.get_text_features(**{key: value.to(device) for key, value in inputs.items()})
    return F.normalize(projected(features).float(), dim=-1)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class PixelRows:
    """``rows -> (N, 3, H, W)`` uint8 tensor of a :class:`~rsitr_hf.data.pixels.PixelSource` (picklable, so
    ``DataLoader`` workers can run it)."""

    source: PixelSource

    def __call__(self, rows: range) -> torch.Tensor:
        return torch.from_numpy(self.source.take(rows))


def embed_in_order(
    count: int,
    batch_size: int,
    load_batch: Callable[[range], object],
    embed_batch: Callable[[object], torch.Tensor],
    accelerator=None,
    desc: str = "",
    num_workers: int = 0,
) -> torch.Tensor:
    """``(count, D)`` float32 embeddings of items ``0..count-1`` on the CPU, in item order.

    The items are embedded in batches of ``batch_size`` (``load_batch(rows)`` prepares a batch's inputs on
    the CPU, in ``num_workers`` data-loader workers when there are some; ``embed_batch`` embeds them), each
    process of ``accelerator`` taking a contiguous share of the batches
    (:func:`~rsitr_hf.utils.distributed.embed_batches`), and every process gets them all.
    """
    shards = Shards.single() if accelerator is None else Shards.of(accelerator)
    batches = [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    rounds = embed_batches(
        batches, embed_batch, shards, load=load_batch, num_workers=num_workers, desc=desc, leave=False
    )
    pieces = [piece for gathered in rounds for piece in gathered]
    return torch.cat(pieces) if pieces else torch.empty(0)


@torch.no_grad()
def encode_split(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    processor,
    batch_size: int = 64,
    accelerator=None,
    text_inputs: TextInputs | None = None,
    pixels: PixelSource | None = None,
    num_workers: int = 0,
) -> RetrievalEmbeddings:
    """Embed every image and every distinct caption of ``dataset`` (rows of the RSITR schema).

    Args:
        model: a CLIP-like model (see module docstring); put in eval mode for the call.
        dataset: one split with ``image`` (unless ``pixels`` is given), ``image_id`` and ``captions`` columns.
        processor: a ``CLIPProcessor``.
        batch_size: images or captions per forward pass (per process).
        accelerator: an ``accelerate.Accelerator`` to shard the work over processes, or ``None``.
        text_inputs: how the model's text tower takes captions (the method's kind,
            :mod:`rsitr_hf.data.text_inputs`; default: CLIP's tokens); each distinct text it reads
            (``text_of``) is embedded once.
        pixels: the split's images as uint8 pixels (:func:`rsitr_hf.data.pixels.cached_pixels`); default:
            decoded from ``dataset["image"]`` (:class:`~rsitr_hf.data.pixels.DecodedPixels`).
        num_workers: ``DataLoader`` workers that read (and, without a cache, decode) the images.
    """
    was_training = model.training
    model.eval()
    text_inputs = text_inputs or TextInputs(processor.tokenizer)
    rows = [[text_inputs.text_of(caption) for caption in row] for row in dataset["captions"]]
    captions = [caption for row in rows for caption in row]
    caption_image_ids = torch.tensor(
        [image_id for image_id, row in zip(dataset["image_id"], rows, strict=True) for _ in row]
    )
    distinct = list(dict.fromkeys(captions))
    row_of = {caption: row for row, caption in enumerate(distinct)}
    by_length = sorted(range(len(distinct)), key=lambda i: len(distinct[i]))
    pixels = pixels if pixels is not None else DecodedPixels(dataset, processor.image_processor)
    normalizer = PixelNormalizer.from_processor(processor.image_processor)

    def tokenize(rows: range) -> dict:
        return text_inputs([distinct[by_length[i]] for i in rows])

    def embed_images(batch: torch.Tensor) -> torch.Tensor:
        return pixel_embeddings(model, normalizer, batch)

    try:
        image_embeds = embed_in_order(
            len(dataset), batch_size, PixelRows(pixels), embed_images, accelerator, "images", num_workers
        )
        sorted_text = embed_in_order(
            len(distinct), batch_size, tokenize, lambda inputs: text_embeddings(model, inputs), accelerator,
            "captions",
        )  # fmt: skip
    finally:
        model.train(was_training)
    text_embeds = torch.empty_like(sorted_text)
    text_embeds[torch.tensor(by_length, dtype=torch.long)] = sorted_text
    return RetrievalEmbeddings(
        image_embeds=image_embeds,
        text_embeds=text_embeds,
        caption_text_index=torch.tensor([row_of[caption] for caption in captions], dtype=torch.long),
        caption_image_ids=caption_image_ids,
        image_ids=torch.tensor(list(dataset["image_id"])),
    )
