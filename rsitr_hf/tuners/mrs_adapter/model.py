"""The MRS-Adapter tuner: injects :class:`MRSAdapterEncoderLayer` into CLIP and owns the one adapter."""

from __future__ import annotations

import re

from torch import nn

from ..base import TOWERS, SharedStateTuner, clip_config, encoder_layer_pattern, place_like
from .config import MRSAdapterConfig
from .layer import MRSAdapter, MRSAdapterEncoderLayer

PREFIX = "mrs_"


def tower_widths(model: nn.Module) -> dict[str, int]:
    """Residual widths ``{"vision": D_v, "text": D_t}`` of a ``CLIPModel`` (read from its config)."""
    config = clip_config(model)
    return {tower: getattr(config, f"{tower}_config").hidden_size for tower in TOWERS}


class MRSAdapterModel(SharedStateTuner):
    """PEFT tuner of PE-RSITR: one :class:`MRSAdapter` per adapter name, shared by every adapted block.

    The adapter lives here as ``mrs_adapter[adapter_name]`` and is saved once (:class:`SharedStateTuner`).
    Use through ``peft.get_peft_model(clip_model, MRSAdapterConfig())`` after ``import rsitr_hf``.
    """

    prefix = PREFIX
    shared_layer_names = ("mrs_adapter",)
    tuner_layer_cls = MRSAdapterEncoderLayer
    target_module_mapping = {"clip": encoder_layer_pattern(list(TOWERS))}
    merge_refusal = (
        "the adapter is a non-linear (ReLU) branch parallel to each MLP, not a change of CLIP's weights."
    )

    def create_shared_state(self, model: nn.Module, config: MRSAdapterConfig, adapter_name: str) -> None:
        """Check or record the base widths in ``config`` and add ``mrs_adapter[adapter_name]`` (every wrapped
        block references the tuner's ``mrs_adapter``)."""
        widths = tower_widths(model)
        for tower in config.towers:
            recorded = getattr(config, f"{tower}_width")
            if recorded is not None and recorded != widths[tower]:
                raise ValueError(
                    f"adapter {adapter_name!r} was trained on a base whose {tower} width is {recorded} "
                    f"(vision {config.vision_width}, text {config.text_width}), but this base model has "
                    f"{tower} width {widths[tower]} (vision {widths['vision']}, text {widths['text']}); "
                    "load it onto the base model it was trained with"
                )
            setattr(config, f"{tower}_width", widths[tower])
        adapter = MRSAdapter(
            {tower: widths[tower] for tower in config.towers},
            config.bottleneck_dim,
            config.shared_dim,
            config.adapter_dropout,
            config.init_weights,
        )
        self.shared_state("mrs_adapter")[adapter_name] = place_like(adapter, next(model.parameters()))

    def _create_and_replace(
        self, peft_config, adapter_name, target, target_name, parent, current_key, **optional_kwargs
    ) -> None:
        if isinstance(target, MRSAdapterEncoderLayer):
            return  # already wrapped: the layer serves every adapter in mrs_adapter
        tower = re.search(r"(vision|text)_model\.encoder", current_key).group(1)
        self._replace_module(
            parent, target_name, MRSAdapterEncoderLayer(target, adapter_name, tower, self.mrs_adapter), target
        )
