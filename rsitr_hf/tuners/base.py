"""What the rsitr_hf tuners share: their layers wrap whole CLIP modules (blocks or towers) and add
non-linear branches, where peft's defaults assume Linear-like targets and mergeable weight deltas; and the
names of CLIP's towers and blocks they target."""

from __future__ import annotations

import re

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

TOWERS = ("vision", "text")


def encoder_layer_pattern(towers: list[str]) -> str:
    """Regex (peft full-match) of the CLIP encoder blocks of ``towers``."""
    return rf"(.*\.)?({'|'.join(towers)})_model\.encoder\.layers\.\d+"


def reset_output_capturing(model: nn.Module) -> None:
    """Drop transformers' ``output_hidden_states`` hooks so they are installed afresh on next use.

    transformers installs them once, lazily, on the ``CLIPEncoderLayer`` instances present at the
    time; after modules are wrapped or unwrapped they must be reinstalled on the modules that now run.
    """
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") == "output_capturing_hook":
                del module._forward_hooks[key]
        if getattr(module, "_output_capturing_hooks_installed", False):
            module._output_capturing_hooks_installed = False


class WrappingLayer(BaseTunerLayer):
    """Tuner-layer state of the rsitr_hf wrappers. They are never merged (``WrappingTuner`` refuses before
    peft reaches a layer), so there is nothing to unmerge either."""

    def init_adapter_state(self, adapter_name: str) -> None:
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters = []

    def unmerge(self) -> None:
        return None


class WrappingTuner(BaseTuner):
    """Base of the rsitr_hf tuners.

    - Replacing a module is a plain ``setattr`` (the wrapper places its own new modules).
    - ``output_hidden_states`` hooks are refreshed after injecting and after unloading.
    - Checkpoint keys carry no adapter name (``<prefixed attribute>.<name>.`` -> ``<prefixed attribute>.``),
      so a checkpoint loads under any adapter name; peft derives the loading direction from the same
      function.
    - ``merge_and_unload`` is refused with ``merge_refusal``: these adapters are not weight deltas.
    """

    merge_refusal = "its branches are non-linear, not a change of CLIP's weights."

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
        return re.sub(
            rf"({re.escape(cls.prefix)}\w*)\.{re.escape(adapter_name)}(\.|$)", r"\1\2", key, count=1
        )

    def _check_merge_allowed(self) -> None:
        raise ValueError(
            f"merge_and_unload() is not possible for {type(self).__name__}: {self.merge_refusal} "
            "Keep the PeftModel, or use unload() to get the plain base model back."
        )
