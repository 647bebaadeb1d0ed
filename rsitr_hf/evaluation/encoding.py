"""Embedding a split of the RSITR schema with any CLIP-like model, and scoring it.

"CLIP-like" means it has ``get_image_features(pixel_values=...)`` and
``get_text_features(input_ids=..., attention_mask=...)`` returning either a tensor or an output whose
``pooler_output`` is the projected embedding: ``transformers.CLIPModel``, and any ``PeftModel`` on it.

Under several processes (``accelerate launch``), each process embeds a contiguous shard and the
shards are gathered in order, so no sample is duplicated or dropped whatever the batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F

from ..data.preprocessing import pixel_values
from .metrics import retrieval_metrics


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


def image_embeddings(model: torch.nn.Module, image_processor, images: list) -> torch.Tensor:
    """``(N, D)`` unit-norm float32 embeddings of PIL ``images`` (on the model's device)."""
    pixels = pixel_values(image_processor, images).to(model_device(model))
    return F.normalize(projected(model.get_image_features(pixel_values=pixels)).float(), dim=-1)


def text_embeddings(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """``(N, D)`` unit-norm float32 embeddings of tokenized captions (moved to the model's device)."""
    device = model_device(model)
    features = model.get_text_features(**{key: value.to(device) for key, value in inputs.items()})
    return F.normalize(projected(features).float(), dim=-1)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def embed_in_shards(
    count: int,
    batch_size: int,
    embed_batch: Callable[[range], torch.Tensor],
    accelerator=None,
    desc: str = "",
) -> torch.Tensor:
    """Embed items ``0..count-1`` in batches, each process a contiguous shard; rows in item order."""
    from tqdm.auto import tqdm

    indices = list(range(count))
    if accelerator is None or accelerator.num_processes == 1:
        shard, disable = indices, False
    else:
        with accelerator.split_between_processes(indices) as local:
            shard = list(local)
        disable = not accelerator.is_main_process
    pieces = []
    for start in tqdm(range(0, len(shard), batch_size), desc=desc, disable=disable, leave=False):
        batch = shard[start : start + batch_size]
        pieces.append(embed_batch(range(batch[0], batch[-1] + 1)).float().cpu())
    local_embeds = torch.cat(pieces) if pieces else torch.empty(0)
    if accelerator is None or accelerator.num_processes == 1:
        return local_embeds
    from accelerate.utils import gather_object

    gathered = [piece for piece in gather_object([local_embeds]) if piece.numel()]
    return torch.cat(gathered)


@torch.no_grad()
def encode_split(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    processor,
    batch_size: int = 64,
    accelerator=None,
    max_length: int = 77,
    text_inputs: Callable[[Sequence[str]], dict] | None = None,
    caption_column: str = "captions",
) -> RetrievalEmbeddings:
    """Embed every image and every distinct caption of ``dataset`` (rows of the RSITR schema).

    Args:
        model: a CLIP-like model (see module docstring); put in eval mode for the call.
        dataset: one split with ``image``, ``image_id`` and ``captions`` columns.
        processor: a ``CLIPProcessor``.
        batch_size: images or captions per forward pass (per process).
        accelerator: an ``accelerate.Accelerator`` to shard the work over processes, or ``None``.
        max_length: captions are truncated to this many tokens.
        text_inputs: optional ``captions -> model inputs`` builder replacing the tokenizer call (for
            methods whose text tower takes extra inputs, e.g. :func:`rsitr_hf.data.pos.pos_text_inputs`).
        caption_column: the column of 5 caption strings per row to embed (POSAPL: ``pos_captions``).
    """
    was_training = model.training
    model.eval()
    rows = list(dataset[caption_column])
    captions = [caption for row in rows for caption in row]
    caption_image_ids = torch.tensor(
        [image_id for image_id, row in zip(dataset["image_id"], rows, strict=True) for _ in row]
    )
    distinct = list(dict.fromkeys(captions))
    row_of = {caption: row for row, caption in enumerate(distinct)}
    by_length = sorted(range(len(distinct)), key=lambda i: len(distinct[i]))

    def tokenize(texts: Sequence[str]) -> dict:
        if text_inputs is not None:
            return text_inputs(texts)
        return processor.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
        )

    def embed_images(rows: range) -> torch.Tensor:
        return image_embeddings(model, processor.image_processor, dataset[rows.start : rows.stop]["image"])

    def embed_texts(rows: range) -> torch.Tensor:
        return text_embeddings(model, tokenize([distinct[by_length[i]] for i in rows]))

    try:
        image_embeds = embed_in_shards(len(dataset), batch_size, embed_images, accelerator, "images")
        sorted_text = embed_in_shards(len(distinct), batch_size, embed_texts, accelerator, "captions")
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


def evaluate_retrieval(
    model: torch.nn.Module, dataset: datasets.Dataset, processor, **encode_kwargs
) -> dict[str, float]:
    """Embed ``dataset`` with ``model`` and return :func:`retrieval_metrics` (R@1/5/10 both ways, mR)."""
    embeddings = encode_split(model, dataset, processor, **encode_kwargs)
    return retrieval_metrics(embeddings.similarity(), embeddings.caption_image_ids, embeddings.image_ids)
