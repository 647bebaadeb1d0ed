"""The POSAPL tuner: wraps ``text_model`` and ``vision_model`` of a ``CLIPModel``."""

from __future__ import annotations

from ..base import WrappingTuner
from .config import POSPromptConfig
from .layer import POSPromptTextTower, POSPromptTower, POSPromptVisionTower

PREFIX = "posapl_"
TOWER_CLASSES = {"text_model": POSPromptTextTower, "vision_model": POSPromptVisionTower}


class POSPromptModel(WrappingTuner):
    """PEFT tuner of POSAPL. Use ``peft.get_peft_model(clip_model, POSPromptConfig(...))`` after
    ``import rsitr_hf``; encode text with POS inputs (see :class:`POSPromptTextTower`)."""

    prefix = PREFIX
    tuner_layer_cls = POSPromptTower
    target_module_mapping = {"clip": r"(.*\.)?(vision|text)_model"}
    merge_refusal = "it adds attention and non-linear branches; they cannot be merged into CLIP's weights."

    def _create_and_replace(
        self, peft_config: POSPromptConfig, adapter_name, target, target_name, parent, current_key, **kwargs
    ) -> None:
        if isinstance(target, POSPromptTower):
            target.update_layer(adapter_name, peft_config)
            return
        tower = TOWER_CLASSES[target_name](target, adapter_name, peft_config)
        self._replace_module(parent, target_name, tower, target)
