"""What the rsitr_hf tuners share: their layers wrap whole CLIP modules (blocks or towers) and add
non-linear branches, where peft's defaults assume Linear-like targets and mergeable weight deltas; state
that many layers share (kept on the tuner, saved once); the names of CLIP's towers and blocks they target;
and where CLIP's text tower pools."""

from __future__ import annotations

import re
from contextlib import nullcontext

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.integrations import init_empty_weights
from torch import nn
from transformers import CLIPConfig

TOWERS = ("vision", "text")


def clip_config(model: nn.Module) -> CLIPConfig:
    """The ``CLIPConfig`` of ``model``: a ``CLIPModel``'s own, or that of the first ``CLIPModel`` inside it (a
    user's module that holds one)."""
    for module in model.modules():
        if isinstance(getattr(module, "config", None), CLIPConfig):
            return module.config
    raise ValueError(f"{type(model).__name__} holds no CLIPModel: the rsitr_hf tuners adapt CLIP's towers")


def checked_towers(towers: list[str]) -> list[str]:
    """A config's ``towers``: a non-empty subset of :data:`TOWERS`, in their order (else a ``ValueError``)."""
    if not towers or set(towers) - set(TOWERS):
        raise ValueError(f"towers must be a non-empty subset of {list(TOWERS)}, got {towers}")
    return [tower for tower in TOWERS if tower in towers]


def encoder_layer_pattern(towers: list[str]) -> str:
    """Regex (peft full-match) of the CLIP encoder blocks of ``towers``."""
    return rf"(.*\.)?({'|'.join(towers)})_model\.encoder\.layers\.\d+"


def end_of_text_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """``(B,)``: where ``CLIPTextModel`` pools each row of ``(B, L)`` ids: the first end-of-text token, or the
    highest id for transformers' legacy configs (``eos_token_id == 2``); a row without one pools at 0."""
    if eos_token_id == 2:
        return input_ids.to(torch.int).argmax(dim=-1)
    return (input_ids == eos_token_id).int().argmax(dim=-1)


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


def branch_output(in_features: int, out_features: int, init_weights: bool = True) -> nn.Linear:
    """The last projection of an adapter branch (what it adds to CLIP's stream): zero weight and bias when
    ``init_weights``, so that a fresh adapter leaves the base model's outputs unchanged; ``nn.Linear``'s own
    random initialisation with ``init_weights=False`` (peft's convention for a non-identity start)."""
    linear = nn.Linear(in_features, out_features)
    if init_weights:
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
    return linear


def place_like(adapter: nn.Module | torch.Tensor, reference: torch.Tensor) -> nn.Module | torch.Tensor:
    """``adapter`` (a module or a parameter) on ``reference``'s device and, for a floating ``reference``, in
    its dtype, as peft places a new adapter beside its base layer; peft then upcasts half-precision
    adapters to float32 unless ``autocast_adapter_dtype=False``. An adapter created on the meta device
    (``low_cpu_mem_usage=True``) stays there: its weights come with the checkpoint."""
    tensors = [adapter] if isinstance(adapter, torch.Tensor) else list(adapter.parameters())
    if reference.is_meta or any(tensor.is_meta for tensor in tensors):
        return adapter
    return adapter.to(
        device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None
    )


class NotMergeableError(ValueError):
    """Merging was asked of a tuner whose adapters are not weight deltas (raised by ``merge_adapter()`` and
    ``merge_and_unload()``)."""


class WrappingLayer(BaseTunerLayer):
    """Tuner-layer state of the rsitr_hf wrappers. They are never merged (``WrappingTuner`` refuses before
    peft reaches a layer), so there is nothing to unmerge either."""

    def init_adapter_state(self, adapter_name: str) -> None:
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters = []

    def unmerge(self) -> None:
        return None

    def place_adapter(self, adapter_name: str, reference: torch.Tensor) -> None:
        """Put the entries of ``adapter_name`` in the ``adapter_layer_names`` dicts beside the base layer
        (:func:`place_like`)."""
        for attribute in self.adapter_layer_names:
            entries = getattr(self, attribute, None)
            if isinstance(entries, nn.ModuleDict | nn.ParameterDict) and adapter_name in entries:
                entries[adapter_name] = place_like(entries[adapter_name], reference)


class WrappingBlock(WrappingLayer):
    """Tuner-layer state of a wrapper of one ``CLIPEncoderLayer`` (``base_layer``), which maps ``(B, N, D)``
    to ``(B, N, D)``: ``in_features`` and ``out_features`` are ``D``, as peft's layers expose them."""

    @property
    def in_features(self) -> int:
        return self.base_layer.embed_dim

    @property
    def out_features(self) -> int:
        return self.base_layer.embed_dim


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
        raise NotMergeableError(
            f"merging (merge_adapter(), merge_and_unload()) is not possible for {type(self).__name__}: "
            f"{self.merge_refusal} Keep the PeftModel, or use unload() to get the plain base model back."
        )


def aliases(state_dict: dict[str, torch.Tensor]) -> dict[tuple, list[str]]:
    """The keys of ``state_dict`` grouped by the tensor they name (same storage, offset and shape)."""
    groups: dict[tuple, list[str]] = {}
    for key, tensor in state_dict.items():
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        groups.setdefault(identity, []).append(key)
    return groups


class SharedStateTuner(WrappingTuner):
    """A tuner whose state shared by many layers lives on the tuner, keyed by adapter name (as VB-LoRA's
    vector bank): ``shared_layer_names`` are its attributes, each a ``ModuleDict``/``ParameterDict`` that
    every layer references (the same object) and declares in ``adapter_layer_names``, so that peft's
    set/delete/trainable bookkeeping sees it.

    The state dict then lists each shared tensor under every layer and under the tuner; a checkpoint keeps
    one copy (the shortest key, ``base_model.<attribute>.<name>.…`` on a ``PeftModel``) and loading gives
    that copy back under every other name, so that peft finds no adapter key missing.
    """

    shared_layer_names: tuple[str, ...] = ()

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs) -> None:
        """Create the adapter's shared state (:meth:`create_shared_state`; on the meta device with
        ``low_cpu_mem_usage=True``, as peft creates every adapter weight then), then wrap the targets."""
        empty = init_empty_weights if kwargs.get("low_cpu_mem_usage") else nullcontext
        with empty():
            self.create_shared_state(model, self.peft_config[adapter_name], adapter_name)
        super().inject_adapter(model, adapter_name, **kwargs)

    def create_shared_state(self, model: nn.Module, config, adapter_name: str) -> None:
        """Add ``adapter_name``'s entries to the ``shared_layer_names`` dicts (see :meth:`shared_state`)."""
        raise NotImplementedError

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        selected = super()._get_adapter_state_dict(
            model, config, adapter_name, state_dict, unwanted_adapter_names
        )
        kept = {min(keys, key=lambda key: (len(key), key)) for keys in aliases(selected).values()}
        return {key: selected[key] for key in sorted(kept)}

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        shared = re.compile(
            rf"({'|'.join(map(re.escape, cls.shared_layer_names))})\.{re.escape(adapter_name)}(\.|$)"
        )
        # one tensor is one parameter object (meta tensors, under low_cpu_mem_usage, share no storage)
        groups: dict[int, list[str]] = {}
        for key, parameter in model.named_parameters(remove_duplicate=False):
            if shared.search(key):
                groups.setdefault(id(parameter), []).append(key)
        for keys in groups.values():
            given = next((key for key in keys if key in remapped), None)
            if given is not None:
                remapped.update({key: remapped[given] for key in keys})
        return remapped

    def shared_state(self, attribute: str, kind: type[nn.Module] = nn.ModuleDict) -> nn.Module:
        """The tuner's ``attribute`` (a ``kind``, created empty on first use), which the layers reference."""
        if not hasattr(self, attribute):
            setattr(self, attribute, kind())
        return getattr(self, attribute)
