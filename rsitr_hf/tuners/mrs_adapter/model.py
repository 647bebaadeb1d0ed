"""The MRS-Adapter tuner: injects :class:`MRSAdapterEncoderLayer` into CLIP and owns the one adapter."""

from __future__ import annotations

import re

import torch
from torch import nn

from ..base import TOWERS, WrappingTuner, encoder_layer_pattern
from .config import MRSAdapterConfig
from .layer import MRSAdapter, MRSAdapterEncoderLayer

PREFIX = "mrs_"


def tower_widths(model: nn.Module) -> dict[str, int]:
    """Residual widths ``{"vision": D_v, "text": D_t}`` of a ``CLIPModel`` (read from its config)."""
    config = model.config
    return {tower: getattr(config, f"{tower}_config").hidden_size for tower in TOWERS}


def aliases(state_dict: dict[str, torch.Tensor]) -> dict[tuple, list[str]]:
    """The keys of ``state_dict`` grouped by the tensor they name (same storage, offset and shape)."""
    groups: dict[tuple, list[str]] = {}
    for key, tensor in state_dict.items():
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        groups.setdefault(identity, []).append(key)
    return groups


class MRSAdapterModel(WrappingTuner):
    """PEFT tuner of PE-RSITR: one :class:`MRSAdapter` per adapter name, shared by every adapted block.

    The adapter lives here as ``mrs_adapter[adapter_name]`` and is saved once. Use through
    ``peft.get_peft_model(clip_model, MRSAdapterConfig())`` after ``import rsitr_hf``.
    """

    prefix = PREFIX
    tuner_layer_cls = MRSAdapterEncoderLayer
    target_module_mapping = {"clip": encoder_layer_pattern(list(TOWERS))}
    merge_refusal = (
        "the adapter is a non-linear (ReLU) branch parallel to each MLP, not a change of CLIP's weights."
    )

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs) -> None:
        """Create the shared adapter and wrap the blocks (each references the tuner's ``mrs_adapter``).

        ``get_peft_model``, ``load_adapter``/``add_adapter`` and ``inject_adapter_in_model`` come here.
        """
        self.create_shared_adapter(model, self.peft_config[adapter_name], adapter_name)
        super().inject_adapter(model, adapter_name, **kwargs)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """peft's selection, with each shared tensor once: every layer references the same adapter, so the
        state dict lists it under every block and under the tuner; the shortest key is kept
        (``base_model.mrs_adapter.<name>.…`` on a ``PeftModel``)."""
        selected = super()._get_adapter_state_dict(
            model, config, adapter_name, state_dict, unwanted_adapter_names
        )
        kept = {min(keys, key=lambda key: (len(key), key)) for keys in aliases(selected).values()}
        return {key: selected[key] for key in sorted(kept)}

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """peft's remapping, with the one saved copy of each shared tensor also given under its other names
        (every block's reference), so that peft finds no adapter key missing."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        marker = f"mrs_adapter.{adapter_name}."
        own = {key: value for key, value in model.state_dict().items() if marker in key}
        for keys in aliases(own).values():
            given = next((key for key in keys if key in remapped), None)
            if given is not None:
                remapped.update({key: remapped[given] for key in keys})
        return remapped

    def create_shared_adapter(self, model: nn.Module, config: MRSAdapterConfig, adapter_name: str) -> None:
        """Check or record the base widths in ``config`` and add ``mrs_adapter[adapter_name]``."""
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
        if not hasattr(self, "mrs_adapter"):
            self.mrs_adapter = nn.ModuleDict()
        device = next(model.parameters()).device
        self.mrs_adapter[adapter_name] = MRSAdapter(
            {tower: widths[tower] for tower in config.towers},
            config.bottleneck_dim,
            config.shared_dim,
            config.adapter_dropout,
        ).to(device)

    def _create_and_replace(
        self, peft_config, adapter_name, target, target_name, parent, current_key, **optional_kwargs
    ) -> None:
        if isinstance(target, MRSAdapterEncoderLayer):
            return  # already wrapped: the layer serves every adapter in mrs_adapter
        tower = re.search(r"(vision|text)_model\.encoder", current_key).group(1)
        self._replace_module(
            parent, target_name, MRSAdapterEncoderLayer(target, adapter_name, tower, self.mrs_adapter), target
        )
