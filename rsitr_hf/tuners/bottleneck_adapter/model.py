"""The bottleneck-adapter tuner: wraps the targeted CLIP blocks in :class:`BottleneckAdapterEncoderLayer`."""

from __future__ import annotations

from ..base import TOWERS, WrappingTuner, encoder_layer_pattern
from .layer import BottleneckAdapterEncoderLayer

PREFIX = "bottleneck_"


class BottleneckAdapterModel(WrappingTuner):
    """PEFT tuner of the Houlsby-style baseline; use through
    ``peft.get_peft_model(clip_model, BottleneckAdapterConfig())`` after ``import rsitr_hf``."""

    prefix = PREFIX
    tuner_layer_cls = BottleneckAdapterEncoderLayer
    target_module_mapping = {"clip": encoder_layer_pattern(list(TOWERS))}
    merge_refusal = "its adapters are non-linear branches, not a change of CLIP's weights."

    def _create_and_replace(
        self, peft_config, adapter_name, target, target_name, parent, current_key, **optional_kwargs
    ) -> None:
        if not isinstance(target, BottleneckAdapterEncoderLayer):
            wrapped = BottleneckAdapterEncoderLayer(target, adapter_name)
            self._replace_module(parent, target_name, wrapped, target)
            target = wrapped
        target.update_layer(adapter_name, peft_config)
