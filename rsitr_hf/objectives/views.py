"""Clean and augmented views of a batch for HMMC-style losses, for any CLIP-like model.

The augmented view (PE-RSITR's "Data Aug.") is dropout on the token embeddings entering each tower's
encoder: for text the token + position embeddings, for vision the patch and class tokens after the
pre-LayerNorm. Clean and augmented inputs of a tower go through one batched forward of ``2B`` rows;
a forward pre-hook on the encoder, present only during the call, drops out the second half.
"""

from __future__ import annotations

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
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_dropout: float,
) -> ViewEmbeddings:
    """Embed ``(B, 3, H, W)`` images and ``(B, L)`` captions twice: clean and with token dropout.

    Works for a ``CLIPModel``, any PEFT model on it (MRS-Adapter, LoRA) and their DDP or Accelerate
    wrappers: the batch goes through ``model``'s own forward (so mixed precision and gradient
    synchronisation apply), with ``2B`` rows per tower. Adapter dropout follows the model's mode.
    """
    clip = unwrap_clip(model)
    batch = pixel_values.shape[0]
    twice = {
        "pixel_values": torch.cat([pixel_values, pixel_values]),
        "input_ids": torch.cat([input_ids, input_ids]),
    }
    if attention_mask is not None:
        twice["attention_mask"] = torch.cat([attention_mask, attention_mask])
    with (
        second_half_dropout(clip.vision_model.encoder, token_dropout),
        second_half_dropout(clip.text_model.encoder, token_dropout),
    ):
        output = model(**twice, return_dict=True)
    images = F.normalize(output.image_embeds.float(), dim=-1)
    texts = F.normalize(output.text_embeds.float(), dim=-1)
    return ViewEmbeddings(images[:batch], texts[:batch], images[batch:], texts[batch:])
