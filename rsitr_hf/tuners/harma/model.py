"""The HarMA tuner: wraps every block of the adapted CLIP towers in :class:`HarMAEncoderLayer`, owns the
mini adapters and the ITC temperature, and (``text_padding="release"``) pads captions as the release did."""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.models.clip.modeling_clip import CLIPTextModel

from ..base import (
    TOWERS,
    SharedStateTuner,
    clip_config,
    encoder_layer_pattern,
    end_of_text_positions,
    place_like,
)
from .config import HarMAConfig
from .layer import HarMAEncoderLayer, MiniAdapter

PREFIX = "harma_"
TEXT_INPUTS = ("input_ids", "attention_mask", "position_ids")


class HarMAModel(SharedStateTuner):
    """PEFT tuner of HarMA; use ``peft.get_peft_model(clip_model, HarMAConfig())`` after ``import rsitr_hf``.

    Kept here, keyed by adapter name and referenced by every wrapped block: ``harma_mini[name]``, a
    ``ModuleList`` of one :class:`MiniAdapter` per block index, and ``harma_temperature[name]``, the ITC
    temperature (:func:`trainable_temperature` finds it for the loss).
    """

    prefix = PREFIX
    shared_layer_names = ("harma_mini", "harma_temperature")
    tuner_layer_cls = HarMAEncoderLayer
    target_module_mapping = {"clip": encoder_layer_pattern(list(TOWERS))}
    merge_refusal = "its adapters hold attention and gates, not a change of CLIP's weights."

    def create_shared_state(self, model: nn.Module, config: HarMAConfig, adapter_name: str) -> None:
        """Add the adapter's mini adapters and temperature."""
        reference = next(model.parameters())
        minis, temperatures = (
            self.shared_state("harma_mini"),
            self.shared_state("harma_temperature", nn.ParameterDict),
        )
        if config.has_mini_adapters:
            blocks = mini_blocks(model, config)
            minis[adapter_name] = nn.ModuleList(
                MiniAdapter(
                    config.bottleneck_dim,
                    config.mini_dim,
                    config.mini_heads,
                    config.gate_init,
                    config.init_weights,
                )
                for _ in range(blocks)
            )
            minis[adapter_name] = place_like(minis[adapter_name], reference)
        temperature = nn.Parameter(torch.tensor(config.temperature_init))
        temperatures[adapter_name] = place_like(temperature, reference)

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs) -> None:
        """Create the shared state, wrap the blocks, and pad captions as the release did where
        ``text_padding="release"``."""
        super().inject_adapter(model, adapter_name, **kwargs)
        for module in model.modules():
            if isinstance(module, CLIPTextModel) and not hasattr(module, "harma_padding_hook"):
                module.harma_padding_hook = module.register_forward_pre_hook(
                    pad_as_released, with_kwargs=True
                )

    def _create_and_replace(
        self, peft_config, adapter_name, target, target_name, parent, current_key, **optional_kwargs
    ) -> None:
        if not isinstance(target, HarMAEncoderLayer):
            place = re.search(r"(vision|text)_model\.encoder\.layers\.(\d+)$", current_key)
            wrapped = HarMAEncoderLayer(
                target,
                adapter_name,
                place.group(1),
                int(place.group(2)),
                self.harma_mini,
                self.harma_temperature,
            )
            self._replace_module(parent, target_name, wrapped, target)
            target = wrapped
        target.update_layer(adapter_name, peft_config)

    def _unload_and_optionally_merge(self, *args, **kwargs) -> nn.Module:
        model = super()._unload_and_optionally_merge(*args, **kwargs)
        for module in model.modules():
            if hasattr(module, "harma_padding_hook"):
                module.harma_padding_hook.remove()
                del module.harma_padding_hook
        return model


def mini_blocks(model: nn.Module, config: HarMAConfig) -> int:
    """How many mini adapters an adapter holds: one per text block (the vision tower's when it has no text
    adapters); sharing them across modalities needs towers of as many blocks."""
    base_config = clip_config(model)
    layers = {tower: getattr(base_config, f"{tower}_config").num_hidden_layers for tower in TOWERS}
    if config.share_across_modalities and len(config.towers) == 2 and layers["vision"] != layers["text"]:
        raise ValueError(
            "share_across_modalities needs towers of as many blocks, but this base model has "
            f"{layers['vision']} vision and {layers['text']} text blocks"
        )
    return layers["text" if "text" in config.towers else "vision"]


def open_clip_ids(input_ids: torch.Tensor, eos_token_id: int, length: int) -> torch.Tensor:
    """``(B, L)`` caption ids as open_clip's tokenizer gives them: ``(B, length)``, every position after the
    end-of-text token 0."""
    ends = end_of_text_positions(input_ids, eos_token_id)
    kept = input_ids[:, :length]
    padded = input_ids.new_zeros(len(input_ids), length)
    padded[:, : kept.shape[1]] = kept
    after_end = torch.arange(length, device=padded.device)[None, :] > ends[:, None]
    return padded.masked_fill(after_end, 0)


def pad_as_released(text_model: CLIPTextModel, args: tuple, kwargs: dict):
    """Forward pre-hook of the text tower: while an active HarMA adapter has ``text_padding="release"``, the
    captions become open_clip's (0 after the end, the full context length) and the attention mask is
    dropped (only the causal mask remains, as in the release), so the adapters' attention sees the same
    padding as the release's did. Other adapters, or disabled ones, leave the inputs as they are."""
    blocks = [layer for layer in text_model.encoder.layers if isinstance(layer, HarMAEncoderLayer)]
    if not blocks or all(
        blocks[0].harma_text_padding[name] != "release" for name in blocks[0].active_names()
    ):
        return None
    inputs = {**dict(zip(TEXT_INPUTS, args, strict=False)), **kwargs}
    if inputs.get("position_ids") is not None:
        raise ValueError("HarMA's release padding places captions itself: give no position_ids")
    inputs["input_ids"] = open_clip_ids(
        inputs["input_ids"], text_model.eos_token_id, text_model.config.max_position_embeddings
    )
    inputs["attention_mask"] = None
    return (), inputs


def trainable_temperature(model: nn.Module) -> torch.Tensor:
    """The ITC temperature of the active HarMA adapter of ``model`` (a ``PeftModel``, a model HarMA was
    injected into, or either wrapped by DDP or ``torch.compile``)."""
    for module in model.modules():
        if isinstance(module, HarMAEncoderLayer) and module.active_names():
            return module.harma_temperature[module.active_names()[0]]
    raise ValueError("the harma loss needs a model with an active HarMA adapter (its trainable temperature)")
