"""Houlsby-style bottleneck adapters and the CLIP block that calls them.

Shapes: ``B`` batch, ``N`` tokens, ``D`` residual width of the tower (vision 768 / text 512 on ViT-B/32).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from ..base import WrappingBlock, branch_output

ACTIVATION_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}


class BottleneckAdapter(nn.Module):
    """``forward(y)``: ``(B, N, D) -> (B, N, D)``, ``up(dropout(act(down(y))))`` (the update only; the
    caller adds it to ``y``). ``up`` starts at zero unless ``init_weights=False``. Computes in its weights'
    dtype (fp32 unless the model was cast), outside autocast, and returns ``y``'s dtype."""

    def __init__(
        self, width: int, bottleneck_dim: int, activation: str, dropout: float, init_weights: bool = True
    ):
        super().__init__()
        self.down = nn.Linear(width, bottleneck_dim)
        self.activation = ACTIVATION_MODULES[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = branch_output(bottleneck_dim, width, init_weights)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = self.up.weight.dtype  # float32, unless the adapter itself was cast
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            update = self.up(self.dropout(self.activation(self.down(hidden_states.to(dtype)))))
        return update.to(hidden_states.dtype)


class BottleneckAdapterEncoderLayer(CLIPEncoderLayer, WrappingBlock):
    """A ``CLIPEncoderLayer`` with an adapter after its attention and/or MLP sub-layer:

    ``a = Attn(LN1(x))``; ``h = x + a + sum A_attn(a)``; ``m = MLP(LN2(h))``; ``out = h + m + sum A_mlp(m)``,
    summing over the active adapters that have an adapter at that position. The wrapped block is
    ``base_layer``; the adapters live in ``bottleneck_attention[name]`` and ``bottleneck_mlp[name]``.
    """

    adapter_layer_names = ("bottleneck_attention", "bottleneck_mlp")

    def __init__(self, base_layer: CLIPEncoderLayer, adapter_name: str):
        nn.Module.__init__(self)
        self.base_layer = base_layer
        self.bottleneck_attention = nn.ModuleDict()
        self.bottleneck_mlp = nn.ModuleDict()
        self.init_adapter_state(adapter_name)

    def update_layer(self, adapter_name: str, config) -> None:
        """Add the adapters of ``adapter_name`` at ``config.positions``."""
        width = self.base_layer.embed_dim
        for position, adapters in (("attention", self.bottleneck_attention), ("mlp", self.bottleneck_mlp)):
            if position in config.positions:
                adapters[adapter_name] = BottleneckAdapter(
                    width,
                    config.bottleneck_dim,
                    config.activation,
                    config.adapter_dropout,
                    config.init_weights,
                )
        self.place_adapter(adapter_name, self.base_layer.layer_norm1.weight)
        self.set_adapter(self.active_adapters)

    def adapted(self, output: torch.Tensor, adapters: nn.ModuleDict) -> torch.Tensor:
        if self.disable_adapters:
            return output
        update = output
        for name in self.active_adapters:
            if name in adapters:
                update = update + adapters[name](output)
        return update

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        block = self.base_layer
        attended, _ = block.self_attn(
            hidden_states=block.layer_norm1(hidden_states), attention_mask=attention_mask, **kwargs
        )
        hidden = hidden_states + self.adapted(attended, self.bottleneck_attention)
        return hidden + self.adapted(block.mlp(block.layer_norm2(hidden)), self.bottleneck_mlp)
