"""POSAPL modules and the two CLIP towers that run them.

Shapes: ``B`` batch, ``L`` caption tokens, ``N`` image tokens (CLS + patches), ``D`` tower width.
Every module whose output enters the residual stream starts at zero (last projection zero-initialised),
so a freshly created adapter leaves CLIP's embeddings unchanged; ``init_weights=False`` (the config's)
initialises those projections randomly instead.
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..base import WrappingLayer, branch_output, end_of_text_positions
from .config import POSPromptConfig

# transformers renamed create_causal_mask's `past_key_values` to `cache` (the old name warns, then goes)
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def in_own_dtype(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in ``module``'s parameter dtype, so fp32 adapters run on a half-precision base (and half
    adapters on any base); under autocast, which chooses the compute dtype itself, ``tensor`` as it is."""
    if torch.is_autocast_enabled(tensor.device.type):
        return tensor
    return tensor.to(next(module.parameters()).dtype)


class Connector(nn.Module):
    """``(B, L, D)`` POS prior -> ``(B, L, D)`` prompt ``z_p``: Linear, ReLU, zero-initialised Linear."""

    def __init__(self, width: int, init_weights: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), branch_output(width, width, init_weights)
        )

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        return self.net(in_own_dtype(self, prior))


class POSAdapter(nn.Module):
    """Per-layer ``(B, L, D) -> (B, L, D)`` map of ``z_p``: Linear D->r, ReLU, zero-initialised r->D."""

    def __init__(self, width: int, bottleneck: int, init_weights: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, bottleneck), nn.ReLU(), branch_output(bottleneck, width, init_weights)
        )

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        return self.net(in_own_dtype(self, prompt)).to(prompt.dtype)


class SAAdapter(nn.Module):
    """On a block's MLP output ``m`` ``(B, T, D)``: ``a = down(m)``, ``a = a + MHSA(a)``, returns ``up(a)``.

    ``key_padding_mask`` ``(B, T)`` is True at padding positions, which then take no part in attention.
    """

    def __init__(self, width: int, bottleneck: int, heads: int, init_weights: bool = True):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.attention = nn.MultiheadAttention(bottleneck, heads, batch_first=True)
        self.up = branch_output(bottleneck, width, init_weights)

    def forward(self, mlp_output: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        reduced = self.down(in_own_dtype(self, mlp_output))
        attended, _ = self.attention(
            reduced, reduced, reduced, key_padding_mask=key_padding_mask, need_weights=False
        )
        return self.up(reduced + attended).to(mlp_output.dtype)


class SideFusion(nn.Module):
    """Mix four tapped residual streams ``x1..x4`` ``(B, T, D)``.

    Units ``A1..A3`` are Linear+ReLU, ``A4`` a zero-initialised Linear. ``cascade``:
    ``a1 = A1(x1)``, ``a_k = A_k(a_{k-1} + x_k)``; ``parallel``: ``A4(A1(x1) + A2(x2) + A3(x3))``.
    With ``pool`` (vision) each unit's output is averaged over tokens (CLS included) and a pooled
    vector is broadcast-added to the next tap; returns ``(B, D)``. Without (text), per token: ``(B, T, D)``.
    """

    def __init__(self, width: int, mode: str, pool: bool, init_weights: bool = True):
        super().__init__()
        self.mode, self.pool = mode, pool
        self.units = nn.ModuleList(
            [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(3)]
            + [branch_output(width, width, init_weights)]
        )

    def reduce(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1) if self.pool else tokens

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        dtype = taps[0].dtype
        return self.mix([in_own_dtype(self, tap) for tap in taps]).to(dtype)

    def mix(self, taps: list[torch.Tensor]) -> torch.Tensor:
        if self.mode == "parallel":
            mixed = sum(self.reduce(unit(tap)) for unit, tap in zip(self.units[:3], taps[:3], strict=True))
            return self.units[3](mixed)
        previous = self.reduce(self.units[0](taps[0]))
        for unit, tap in zip(self.units[1:], taps[1:], strict=True):
            carried = previous[:, None, :] if self.pool else previous
            previous = self.reduce(unit(tap + carried))
        return previous


class POSPromptTower(nn.Module, WrappingLayer):
    """Common part of the two towers: per-adapter modules in ``ModuleDict``s keyed by adapter name."""

    adapter_layer_names = ("posapl_sa_adapters", "posapl_fusion")
    other_param_names = ("posapl_fusion_layers",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: POSPromptConfig):
        nn.Module.__init__(self)
        self.base_layer = base_layer
        self.posapl_sa_adapters = nn.ModuleDict()
        self.posapl_fusion = nn.ModuleDict()
        self.posapl_fusion_layers: dict[str, list[int]] = {}
        self.init_adapter_state(adapter_name)
        self.update_layer(adapter_name, config)

    @property
    def width(self) -> int:
        return self.base_layer.config.hidden_size

    def update_layer(self, adapter_name: str, config: POSPromptConfig) -> None:
        layers = self.base_layer.config.num_hidden_layers
        if max(config.fusion_layers) > layers:
            raise ValueError(
                f"fusion_layers {config.fusion_layers} exceed the {layers} blocks of the base tower"
            )
        self.posapl_sa_adapters[adapter_name] = nn.ModuleList(
            SAAdapter(self.width, config.adapter_dim, config.adapter_heads, config.init_weights)
            for _ in range(layers)
        )
        self.posapl_fusion[adapter_name] = SideFusion(
            self.width, config.fusion, self.pools_fusion, config.init_weights
        )
        self.posapl_fusion_layers[adapter_name] = list(config.fusion_layers)
        self.place_adapter(adapter_name, next(self.base_layer.parameters()))

    def active_name(self) -> str | None:
        """The active adapter, or ``None`` when adapters are disabled or none is left (the base then runs)."""
        names = (
            [] if self.disable_adapters else [n for n in self.active_adapters if n in self.posapl_sa_adapters]
        )
        if len(names) > 1:
            raise ValueError(f"POSAPL runs exactly one active adapter at a time, got {names}")
        return names[0] if names else None

    def run_block(
        self, layer, hidden, attention_mask, sa_adapter, padding, pos_update=None, **attention_kwargs
    ):
        """One CLIP block with POSAPL: ``h = x + Attn(LN1 x) [+ POS-Adapter(z_p)]``,
        ``m = MLP(LN2 h)``, ``out = h + m + SA(m)``.

        Recomputed in the backward pass when ``gradient_checkpointing_enable()`` marked the wrapped CLIP
        block (transformers' flag and function, as the block's own forward would use them)."""
        block = partial(self.adapted_block, layer, sa_adapter, padding=padding, **attention_kwargs)
        if layer.gradient_checkpointing and layer.training:
            return layer._gradient_checkpointing_func(block, hidden, attention_mask, pos_update)
        return block(hidden, attention_mask, pos_update)

    @staticmethod
    def adapted_block(layer, sa_adapter, hidden, attention_mask, pos_update, padding, **attention_kwargs):
        attended, _ = layer.self_attn(
            hidden_states=layer.layer_norm1(hidden), attention_mask=attention_mask, **attention_kwargs
        )
        hidden = hidden + attended
        if pos_update is not None:
            hidden = hidden + pos_update
        mlp_output = layer.mlp(layer.layer_norm2(hidden))
        return hidden + mlp_output + sa_adapter(mlp_output, padding)

    def taps(self, name: str, states: list[torch.Tensor]) -> list[torch.Tensor]:
        """The residual streams after the fusion blocks (``states[k]`` is the output of block ``k``)."""
        return [states[block] for block in self.posapl_fusion_layers[name]]


class POSPromptVisionTower(POSPromptTower):
    """Wraps ``CLIPModel.vision_model``: SA-Adapters in every block; Side Fusion (pooled) added to the
    post-LayerNorm CLS feature, so ``pooler_output`` ``(B, D)`` goes to the frozen projection as before."""

    pools_fusion = True

    def forward(self, pixel_values=None, interpolate_pos_encoding=False, output_hidden_states=None, **kwargs):
        base, name = self.base_layer, self.active_name()
        if name is None:
            return base(
                pixel_values=pixel_values,
                interpolate_pos_encoding=interpolate_pos_encoding,
                output_hidden_states=output_hidden_states,
            )
        hidden = base.pre_layrnorm(
            base.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        )
        states = [hidden]
        for layer, sa_adapter in zip(base.encoder.layers, self.posapl_sa_adapters[name], strict=True):
            hidden = self.run_block(layer, hidden, None, sa_adapter, None)
            states.append(hidden)
        pooled = base.post_layernorm(hidden[:, 0, :]) + self.posapl_fusion[name](self.taps(name, states))
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=tuple(states) if output_hidden_states else None,
        )


class POSPromptTextTower(POSPromptTower):
    """Wraps ``CLIPModel.text_model``: the POS prior enters through the Connector (added to the token
    embeddings) and the optional POS-Adapters; SA-Adapters attend over non-padding tokens; Side Fusion
    (per token) is added to the final-LayerNorm tokens before the end-of-text token is pooled.

    POS inputs are keyword arguments of ``get_text_features`` / ``forward`` (they pass through
    ``PeftModel`` and Accelerate's wrappers): ``pos_input_ids`` ``(B, L_pos)`` in sentence mode, cut to the
    caption length ``L`` and, after each sentence's end-of-text token, filled up to ``L`` with the config's
    ``pos_padding_id`` (0, as the release's 77-token zero padding; whatever padding the collator used is
    replaced); ``pos_tag_ids`` ``(B, L)`` in aligned mode.
    """

    pools_fusion = False
    adapter_layer_names = (
        *POSPromptTower.adapter_layer_names,
        "posapl_connector",
        "posapl_pos_adapters",
        "posapl_tag_embedding",
    )
    other_param_names = (*POSPromptTower.other_param_names, "posapl_pos_mode", "posapl_pos_padding_id")

    def update_layer(self, adapter_name: str, config: POSPromptConfig) -> None:
        for attribute in ("posapl_connector", "posapl_pos_adapters", "posapl_tag_embedding"):
            if not hasattr(self, attribute):
                setattr(self, attribute, nn.ModuleDict())
        if not hasattr(self, "posapl_pos_mode"):
            self.posapl_pos_mode: dict[str, str] = {}
            self.posapl_pos_padding_id: dict[str, int | None] = {}
        self.posapl_connector[adapter_name] = Connector(self.width, config.init_weights)
        if config.pos_adapter_dim:
            self.posapl_pos_adapters[adapter_name] = nn.ModuleList(
                POSAdapter(self.width, config.pos_adapter_dim, config.init_weights)
                for _ in range(self.base_layer.config.num_hidden_layers)
            )
        if config.pos_mode == "aligned":
            self.posapl_tag_embedding[adapter_name] = nn.Embedding(config.num_pos_tags, self.width)
        self.posapl_pos_mode[adapter_name] = config.pos_mode
        self.posapl_pos_padding_id[adapter_name] = config.pos_padding_id
        super().update_layer(adapter_name, config)

    def pos_prior(self, name: str, input_ids, pos_input_ids, pos_tag_ids) -> torch.Tensor:
        """``(B, L, D)``: what the Connector maps to the prompt ``z_p``."""
        length = input_ids.shape[1]
        if self.posapl_pos_mode[name] == "aligned":
            if pos_tag_ids is None:
                raise ValueError(
                    "this POSAPL model (pos_mode='aligned') needs `pos_tag_ids` (B, L): the UPOS tag "
                    "id of every caption token, from rsitr_hf.data.pos; none were given"
                )
            if pos_tag_ids.shape != input_ids.shape:
                raise ValueError(
                    f"pos_tag_ids {tuple(pos_tag_ids.shape)} must match input_ids {tuple(input_ids.shape)}"
                )
            return self.posapl_tag_embedding[name](pos_tag_ids)
        if pos_input_ids is None:
            raise ValueError(
                "this POSAPL model (pos_mode='sentence') needs `pos_input_ids`: the CLIP tokens of each "
                "caption's POS sentence, from rsitr_hf.data.pos; none were given"
            )
        pos_input_ids = self.padded_pos_sentence(name, pos_input_ids, length)
        with torch.no_grad():  # CLIP's own embeddings stay frozen
            return self.base_layer.embeddings(input_ids=pos_input_ids)

    def padded_pos_sentence(self, name: str, pos_input_ids: torch.Tensor, length: int) -> torch.Tensor:
        """``(B, length)``: each POS sentence up to its end-of-text token (found as CLIP's pooling finds it),
        then the adapter's padding id; cut to ``length``."""
        config = self.base_layer.config
        padding_id = self.posapl_pos_padding_id.get(name, 0)
        padding_id = config.pad_token_id if padding_id is None else padding_id
        if config.eos_token_id == 2:  # transformers' legacy configs: the end is the highest id
            end = pos_input_ids.argmax(dim=-1)
        else:
            is_end = pos_input_ids == config.eos_token_id
            end = torch.where(is_end.any(dim=-1), is_end.int().argmax(dim=-1), pos_input_ids.shape[1])
        width = max(length, pos_input_ids.shape[1])
        padded = pos_input_ids.new_full((len(pos_input_ids), width), padding_id)
        padded[:, : pos_input_ids.shape[1]] = pos_input_ids
        after_end = torch.arange(width, device=padded.device)[None, :] > end[:, None]
        return padded.masked_fill(after_end, padding_id)[:, :length]

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        pos_input_ids=None,
        pos_tag_ids=None,
        output_hidden_states=None,
        **kwargs,
    ):
        base, name = self.base_layer, self.active_name()
        if name is None:
            return base(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=output_hidden_states,
            )
        embeddings = base.embeddings(input_ids=input_ids, position_ids=position_ids)
        prior = self.pos_prior(name, input_ids, pos_input_ids, pos_tag_ids)
        prompt = self.posapl_connector[name](prior).to(embeddings.dtype)
        hidden = embeddings + prompt
        causal_mask = create_causal_mask(
            config=base.config, inputs_embeds=hidden, attention_mask=attention_mask, **{CACHE_ARGUMENT: None}
        )
        padding = None if attention_mask is None else attention_mask == 0
        pos_adapters = self.posapl_pos_adapters[name] if name in self.posapl_pos_adapters else None
        states = [hidden]
        for index, (layer, sa_adapter) in enumerate(
            zip(base.encoder.layers, self.posapl_sa_adapters[name], strict=True)
        ):
            pos_update = pos_adapters[index](prompt) if pos_adapters is not None else None
            hidden = self.run_block(
                layer, hidden, causal_mask, sa_adapter, padding, pos_update, is_causal=True
            )
            states.append(hidden)
        tokens = base.final_layer_norm(hidden) + self.posapl_fusion[name](self.taps(name, states))
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=tokens[
                torch.arange(len(tokens), device=tokens.device),
                end_of_text_positions(input_ids, base.eos_token_id),
            ],
            hidden_states=tuple(states) if output_hidden_states else None,
        )
