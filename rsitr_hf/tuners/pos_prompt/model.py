"""The POSAPL tuner: wraps ``text_model`` and ``vision_model`` of a ``CLIPModel``."""

from __future__ import annotations

import re

from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ..mrs_adapter.model import reset_output_capturing
from .config import POSPromptConfig
from .layer import POSPromptTextTower, POSPromptTower, POSPromptVisionTower

PREFIX = "posapl_"
TOWER_CLASSES = {"text_model": POSPromptTextTower, "vision_model": POSPromptVisionTower}


class POSPromptModel(BaseTuner):
    """PEFT tuner of POSAPL. Use ``peft.get_peft_model(clip_model, POSPromptConfig(...))`` after
    ``import rsitr_hf``; encode text with POS inputs (see :class:`POSPromptTextTower`)."""

    prefix = PREFIX
    tuner_layer_cls = POSPromptTower
    target_module_mapping = {"clip": r"(.*\.)?(vision|text)_model"}

    def _create_and_replace(
        self, peft_config: POSPromptConfig, adapter_name, target, target_name, parent, current_key, **kwargs
    ) -> None:
        if isinstance(target, POSPromptTower):
            target.update_layer(adapter_name, peft_config)
            return
        tower = TOWER_CLASSES[target_name](target, adapter_name, peft_config)
        self._replace_module(parent, target_name, tower, target)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        setattr(parent, child_name, new_module)

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs) -> None:
        super().inject_adapter(model, adapter_name, **kwargs)
        reset_output_capturing(model)

    def _unload_and_optionally_merge(self, *args, **kwargs) -> nn.Module:
        model = super()._unload_and_optionally_merge(*args, **kwargs)
        reset_output_capturing(model)
        return model

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # posapl_sa_adapters.<name>.3.down.weight -> posapl_sa_adapters.3.down.weight; peft derives the
        # loading direction from this same function, so a checkpoint loads under any adapter name
        return re.sub(rf"({PREFIX}[a-z_]+)\.{re.escape(adapter_name)}(\.|$)", r"\1\2", key)

    def _check_merge_allowed(self) -> None:
        raise ValueError(
            "merge_and_unload() is not possible for POSAPL (attention and non-linear branches); "
            "keep the PeftModel, or use unload()"
        )
