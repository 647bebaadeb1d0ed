"""CLIP's forward pass computed straight from an OpenAI-format state dict (the layout of OpenAI's,
open_clip's, GeoRSCLIP's and RemoteCLIP's checkpoints), without any model class: the reference that
``rsitr-convert`` checks a converted ``CLIPModel`` against.

It follows OpenAI's ``model.py`` for ViT CLIP: pre-LayerNorm blocks with fused ``in_proj`` attention on
``(L, N, D)``, the class token after ``ln_post`` times ``visual.proj``, and the end-of-text token (the highest
id) after ``ln_final`` times ``text_projection``, with a causal mask over the text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HEAD_WIDTH = 64  # every OpenAI / open_clip ViT CLIP has 64-wide attention heads
LAYER_NORM_EPS = 1e-5


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def layer_norm(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps=LAYER_NORM_EPS)


def residual_block(state: dict, prefix: str, x: torch.Tensor, mask: torch.Tensor | None, activation: str):
    """One ``ResidualAttentionBlock`` on ``(L, N, D)``: ``x + attn(ln_1 x)``, then ``x + mlp(ln_2 x)``."""
    width = x.shape[-1]
    y = layer_norm(state, prefix + "ln_1", x)
    attended, _ = F.multi_head_attention_forward(
        y, y, y, width, width // HEAD_WIDTH,
        state[prefix + "attn.in_proj_weight"], state[prefix + "attn.in_proj_bias"],
        None, None, False, 0.0,
        state[prefix + "attn.out_proj.weight"], state[prefix + "attn.out_proj.bias"],
        need_weights=False, attn_mask=mask,
    )  # fmt: skip
    x = x + attended
    y = F.linear(
        layer_norm(state, prefix + "ln_2", x),
        state[prefix + "mlp.c_fc.weight"],
        state[prefix + "mlp.c_fc.bias"],
    )
    y = quick_gelu(y) if activation == "quick_gelu" else F.gelu(y)
    return x + F.linear(y, state[prefix + "mlp.c_proj.weight"], state[prefix + "mlp.c_proj.bias"])


def count_blocks(state: dict, prefix: str) -> int:
    marker = prefix + "transformer.resblocks."
    return len({key[len(marker) :].split(".")[0] for key in state if key.startswith(marker)})


def encode_image(state: dict, images: torch.Tensor, activation: str) -> torch.Tensor:
    """``(N, 3, S, S)`` normalised images -> ``(N, P)`` projected image features (not normalised)."""
    patch = state["visual.conv1.weight"]
    width = patch.shape[0]
    x = F.conv2d(images, patch, stride=patch.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([state["visual.class_embedding"].expand(len(x), 1, width), x], dim=1)
    x = layer_norm(state, "visual.ln_pre", x + state["visual.positional_embedding"]).transpose(0, 1)
    for index in range(count_blocks(state, "visual.")):
        x = residual_block(state, f"visual.transformer.resblocks.{index}.", x, None, activation)
    return layer_norm(state, "visual.ln_post", x[0]) @ state["visual.proj"]


def encode_text(state: dict, tokens: torch.Tensor, activation: str) -> torch.Tensor:
    """``(N, L)`` token ids (end-of-text the highest id of each row) -> ``(N, P)`` projected text features."""
    length = tokens.shape[1]
    x = (state["token_embedding.weight"][tokens] + state["positional_embedding"][:length]).transpose(0, 1)
    mask = torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1)
    for index in range(count_blocks(state, "")):
        x = residual_block(state, f"transformer.resblocks.{index}.", x, mask, activation)
    x = layer_norm(state, "ln_final", x.transpose(0, 1))
    return x[torch.arange(len(x)), tokens.argmax(dim=-1)] @ state["text_projection"]
