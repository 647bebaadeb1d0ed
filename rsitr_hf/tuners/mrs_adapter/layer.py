"""MRS-Adapter modules: the single shared adapter and the CLIP block that calls it.

Shapes: ``B`` batch, ``N`` tokens, ``D`` residual width of the tower (vision 768 / text 512 on ViT-B/32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from ..base import WrappingBlock, branch_output


class MRSAdapter(nn.Module):
    """The one adapter of the whole model (docs/methods.md, PE-RSITR).

    ``forward(h, tower)`` maps ``(B, N, D_tower)`` to ``(B, N, D_tower)``:
    ``z = dropout(relu(down[tower](h)))`` then ``concat(up[tower](z), shared_up(z))``, the shared
    up-projection filling the last ``shared_dim`` channels. Up-projections and all biases start at zero
    (``init_weights=False``: ``nn.Linear``'s random initialisation instead). Computes in its weights'
    dtype (fp32 unless the model was cast, e.g. ``model.to(torch.bfloat16)``), outside autocast, and
    returns ``h``'s dtype.
    """

    def __init__(
        self,
        widths: dict[str, int],
        bottleneck_dim: int,
        shared_dim: int,
        dropout: float,
        init_weights: bool = True,
    ):
        super().__init__()
        for tower, width in widths.items():
            if width <= shared_dim:
                raise ValueError(f"shared_dim {shared_dim} must be smaller than the {tower} width {width}")
        self.down = nn.ModuleDict(
            {tower: nn.Linear(width, bottleneck_dim) for tower, width in widths.items()}
        )
        self.up = nn.ModuleDict(
            {
                tower: branch_output(bottleneck_dim, width - shared_dim, init_weights)
                for tower, width in widths.items()
            }
        )
        self.shared_up = branch_output(bottleneck_dim, shared_dim, init_weights)
        self.dropout = nn.Dropout(dropout)
        if init_weights:
            for linear in self.down.values():
                nn.init.zeros_(linear.bias)

    def forward(self, hidden_states: torch.Tensor, tower: str) -> torch.Tensor:
        dtype = self.shared_up.weight.dtype  # float32 as published, unless the adapter itself was cast
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            bottleneck = self.dropout(F.relu(self.down[tower](hidden_states.to(dtype))))
            update = torch.cat([self.up[tower](bottleneck), self.shared_up(bottleneck)], dim=-1)
        return update.to(hidden_states.dtype)


class MRSAdapterEncoderLayer(CLIPEncoderLayer, WrappingBlock):
    """A ``CLIPEncoderLayer`` whose MLP branch runs in parallel with the shared MRS-Adapter.

    ``h = x + Attn(LN1(x))``; ``out = h + MLP(LN2(h)) + sum_a A_a(h)`` over the active adapters ``a``.
    The wrapped block is ``base_layer``. ``mrs_adapter`` is the tuner's ``ModuleDict`` of adapters keyed by
    adapter name, the same object in every layer (as VB-LoRA shares its vector bank), declared in
    ``adapter_layer_names`` so that peft's set/delete/trainable bookkeeping sees it; the checkpoint keeps
    one copy (:meth:`MRSAdapterModel._get_adapter_state_dict`). Being a ``CLIPEncoderLayer``, it is where
    ``output_hidden_states`` records the post-adapter states.
    """

    adapter_layer_names = ("mrs_adapter",)
    other_param_names = ("tower",)

    def __init__(self, base_layer: CLIPEncoderLayer, adapter_name: str, tower: str, adapters: nn.ModuleDict):
        nn.Module.__init__(self)
        self.base_layer = base_layer
        self.tower = tower
        self.mrs_adapter = adapters
        self.init_adapter_state(adapter_name)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        block = self.base_layer
        residual = hidden_states
        attended, _ = block.self_attn(
            hidden_states=block.layer_norm1(hidden_states), attention_mask=attention_mask, **kwargs
        )
        hidden = residual + attended
        output = hidden + block.mlp(block.layer_norm2(hidden))
        if self.disable_adapters:
            return output
        for name in self.active_adapters:
            if name in self.mrs_adapter:
                output = output + self.mrs_adapter[name](hidden, self.tower)
        return output
