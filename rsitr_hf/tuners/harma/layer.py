"""HarMA modules and the CLIP block that runs them.

Shapes: ``B`` batch, ``T`` tokens (77 caption positions or 50 image tokens on ViT-B/32), ``D`` residual
width of the tower (vision 768 / text 512 on ViT-B/32), ``r`` the adapter bottleneck (128), ``s`` the mini
adapter's width (64). Attention inside the adapters runs over the token axis of each sample. Up-projections
start at zero, so a fresh adapter is the identity and the adapted model equals the base model
(``init_weights=False``, the config's: random up-projections instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from ..base import WrappingBlock, branch_output


def gate(value: float) -> nn.Parameter:
    """A scalar gate, used through its sigmoid."""
    return nn.Parameter(torch.tensor(float(value)))


def self_attend(
    attention: nn.MultiheadAttention, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """``(B, T, w) -> (B, T, w)``: ``attention`` over the tokens of each sample, padding keys left out when
    ``key_padding_mask`` ``(B, T)`` (True at padding) is given."""
    return attention(tokens, tokens, tokens, key_padding_mask=key_padding_mask, need_weights=False)[0]


class GatedAttentionBottleneck(nn.Module):
    """What HarMA's two adapters are made of: ``down`` (width -> bottleneck), self-attention with ``heads``
    heads in the bottleneck, a zero-initialised ``up`` (bottleneck -> width; random with
    ``init_weights=False``) and a mixing ``gate``."""

    def __init__(self, width: int, bottleneck: int, heads: int, gate_init: float, init_weights: bool = True):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.attention = nn.MultiheadAttention(bottleneck, heads, batch_first=True)
        self.up = branch_output(bottleneck, width, init_weights)
        self.gate = gate(gate_init)


class MiniAdapter(GatedAttentionBottleneck):
    """The mini adapter inside the bottleneck (the release's ``BiShareAdapter``), ``(B, T, r) -> (B, T, r)``:
    ``y = down(v)``, ``c = sigmoid(g)``, returns ``v + up(c * MHA(y) + (1 - c) * y)``; ``up`` starts at 0."""

    def forward(self, features: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        reduced = self.down(features)
        mix = torch.sigmoid(self.gate)
        attended = self_attend(self.attention, reduced, key_padding_mask)
        return features + self.up(mix * attended + (1 - mix) * reduced)


class GatedMultimodalAdapter(GatedAttentionBottleneck):
    """The adapter of one block (the release's ``MMadapter`` with the block's gate), on the MLP output ``m``
    ``(B, T, D)``:

    ``u = GELU(down(m))``; ``v = MHA(u)``; ``v = mini(v)`` where the block has a mini adapter;
    ``v = MHA(v)`` (the same attention weights, applied a second time); ``b = sigmoid(gate)``;
    ``w = b * u + (1 - b) * v``; the adapter gives ``m + up(w)``, and the block gate
    ``a = sigmoid(block_gate)`` mixes it with ``m``: ``a * (m + up(w)) + (1 - a) * m = m + a * up(w)``,
    which is returned.

    Computes in its weights' dtype (fp32 unless the model was cast), outside autocast, and returns ``m``'s
    dtype.
    """

    def __init__(self, width: int, bottleneck: int, heads: int, gate_init: float, init_weights: bool = True):
        super().__init__(width, bottleneck, heads, gate_init, init_weights)
        self.block_gate = gate(gate_init)

    def forward(
        self,
        mlp_output: torch.Tensor,
        mini: MiniAdapter | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        dtype = self.up.weight.dtype
        with torch.autocast(device_type=mlp_output.device.type, enabled=False):
            reduced = F.gelu(self.down(mlp_output.to(dtype)))
            attended = self_attend(self.attention, reduced, key_padding_mask)
            if mini is not None:
                attended = mini(attended, key_padding_mask)
            attended = self_attend(self.attention, attended, key_padding_mask)
            mix = torch.sigmoid(self.gate)
            update = self.up(mix * reduced + (1 - mix) * attended) * torch.sigmoid(self.block_gate)
        return mlp_output + update.to(mlp_output.dtype)


def key_padding_of(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, T)`` True at the padding keys, from the mask a ``CLIPEncoderLayer`` receives: ``None`` (no
    padding), ``(B, T)`` (1 at tokens) or the ``(B, 1, T, T)`` causal mask with padding, boolean (True:
    attend) or additive (0: attend); its last query row attends to every key but the padding."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        return attention_mask == 0
    last_row = attention_mask[:, 0, -1, :]
    return ~last_row if last_row.dtype == torch.bool else last_row < 0


class HarMAEncoderLayer(CLIPEncoderLayer, WrappingBlock):
    """A ``CLIPEncoderLayer`` whose MLP output goes through the active HarMA adapters before the residual add:

    ``h = x + Attn(LN1(x))``; ``m = MLP(LN2(h))``; ``m = A_a(m)`` for each active adapter ``a``;
    ``out = h + m``.

    The wrapped block is ``base_layer``; its adapters live in ``harma_adapter[name]``. ``harma_mini`` and
    ``harma_temperature`` are the tuner's (the same objects in every layer, keyed by adapter name, as
    VB-LoRA's vector bank): the mini adapters, one per block index, and the ITC temperature.
    """

    adapter_layer_names = ("harma_adapter", "harma_mini", "harma_temperature")
    other_param_names = ("harma_uses_mini", "harma_text_padding", "tower")

    def __init__(
        self,
        base_layer: CLIPEncoderLayer,
        adapter_name: str,
        tower: str,
        index: int,
        minis: nn.ModuleDict,
        temperatures: nn.ParameterDict,
    ):
        nn.Module.__init__(self)
        self.base_layer = base_layer
        self.tower, self.index = tower, index
        self.harma_adapter = nn.ModuleDict()
        self.harma_mini = minis
        self.harma_temperature = temperatures
        self.harma_uses_mini: dict[str, bool] = {}
        self.harma_text_padding: dict[str, str] = {}
        self.init_adapter_state(adapter_name)

    def update_layer(self, adapter_name: str, config) -> None:
        """Add the block's adapter of ``adapter_name`` (the tuner has created its mini adapters)."""
        self.harma_adapter[adapter_name] = GatedMultimodalAdapter(
            self.base_layer.embed_dim,
            config.bottleneck_dim,
            config.heads,
            config.gate_init,
            config.init_weights,
        )
        self.place_adapter(adapter_name, self.base_layer.layer_norm1.weight)
        self.harma_uses_mini[adapter_name] = self.tower == "text" or config.share_across_modalities
        self.harma_text_padding[adapter_name] = config.text_padding
        self.set_adapter(self.active_adapters)

    def active_names(self) -> list[str]:
        """The active adapters this block has (none while adapters are disabled)."""
        if self.disable_adapters:
            return []
        return [name for name in self.active_adapters if name in self.harma_adapter]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        block = self.base_layer
        attended, _ = block.self_attn(
            hidden_states=block.layer_norm1(hidden_states), attention_mask=attention_mask, **kwargs
        )
        hidden = hidden_states + attended
        mlp_output = block.mlp(block.layer_norm2(hidden))
        for name in self.active_names():
            masked = self.harma_text_padding[name] == "masked"
            mini = self.harma_mini[name][self.index] if self.harma_uses_mini[name] else None
            mlp_output = self.harma_adapter[name](
                mlp_output, mini, key_padding_of(attention_mask) if masked else None
            )
        return hidden + mlp_output
