"""The embeddings of a training batch that the losses compare, for any CLIP-like model: one view of each pair
(:func:`pair_embeddings`), or clean and augmented views for HMMC-style losses (:func:`encode_views`).

The augmented view (PE-RSITR's "Data Aug.") is dropout on the token embeddings entering each tower's
encoder: for text the token + position embeddings, for vision the patch and class tokens after the
pre-LayerNorm. Clean and augmented inputs of a tower go through one batched forward of ``2B`` rows;
a forward pre-hook on the encoder, present only during the call, drops out the second half.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ViewEmbeddings:
    """L2-normalised embeddings, each ``(B, projection_dim)``."""

    image: torch.Tensor
    text: torch.Tensor
    image_aug: torch.Tensor
    text_aug: torch.Tensor


def unwrap_clip(model: nn.Module) -> nn.Module:
    """The ``CLIPModel`` inside DDP/compiled wrappers, a ``PeftModel`` or a tuner (adapters stay injected)."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@contextmanager
def second_half_dropout(encoder: nn.Module, p: float):
    """While active, ``encoder``'s ``inputs_embeds`` rows ``B..2B-1`` get dropout ``p`` (in train mode)."""

    def hook(module, args, kwargs):
        embeds = kwargs["inputs_embeds"] if "inputs_embeds" in kwargs else args[0]
        half = embeds.shape[0] // 2
        dropped = torch.cat([embeds[:half], F.dropout(embeds[half:], p, training=module.training)])
        if "inputs_embeds" in kwargs:
            kwargs["inputs_embeds"] = dropped
            return args, kwargs
        return (dropped, *args[1:]), kwargs

    handle = encoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def encode_views(
    model: nn.Module,
    pixel_values: torch.Tensor,
    text_inputs: Mapping[str, torch.Tensor],
    token_dropout: float,
) -> ViewEmbeddings:
    """Embed ``(B, 3, H, W)`` images and ``B`` captions (``text_inputs``: the text tower's inputs, each
    ``(B, ...)``, e.g. ``input_ids`` and ``attention_mask``) twice: clean and with token dropout.

    Works for a ``CLIPModel``, any PEFT model on it (MRS-Adapter, LoRA) and their DDP or Accelerate
    wrappers: the batch goes through ``model``'s own forward (so mixed precision and gradient
    synchronisation apply), with ``2B`` rows per tower. Adapter dropout follows the model's mode.
    """
    clip = unwrap_clip(model)
    batch = pixel_values.shape[0]
    twice = {
        key: torch.cat([value, value]) for key, value in {"pixel_values": pixel_values, **text_inputs}.items()
    }
    with (
        second_half_dropout(clip.vision_model.encoder, token_dropout),
        second_half_dropout(clip.text_model.encoder, token_dropout),
    ):
        output = model(**twice, return_dict=True)
    images = F.normalize(output.image_embeds.float(), dim=-1)
    texts = F.normalize(output.text_embeds.float(), dim=-1)
    return ViewEmbeddings(images[:batch], texts[:batch], images[batch:], texts[batch:])


def pair_embeddings(
    model: nn.Module, pixel_values: torch.Tensor, text_inputs: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image, text)``: the ``(B, D)`` float32 embeddings of a batch of pairs in one forward of ``model``
    (the model's own projected and L2-normalised ``image_embeds`` and ``text_embeds``)."""
    output = model(pixel_values=pixel_values, **text_inputs, return_dict=True)
    return output.image_embeds.float(), output.text_embeds.float()
