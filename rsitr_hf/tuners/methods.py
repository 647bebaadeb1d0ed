"""The method table: one :class:`MethodSpec` per method, declared beside the method and registered on import.

Everything outside a method that depends on which method a run uses reads its spec, never its name: recipe
validation and ``--help`` (``method.name`` and its choices, the default loss), the training loop (the PEFT
config or which base weights train, POS inputs, float32 for base weights), the model card (tags, text, how
to load it), search and the grids (whether text queries need POS inputs) and ``rsitr-petl`` (zero-shot,
the POS tagger). Adding a method is one :func:`register_method` call; nothing else in rsitr_hf changes::

    from peft import IA3Config
    from rsitr_hf import MethodSpec, register_method

    register_method(MethodSpec(
        name="ia3", summary="(IA)^3 scaling vectors", config_class=IA3Config,
        config_defaults={"target_modules": ["k_proj", "v_proj", "fc2"], "feedforward_modules": ["fc2"]},
        hub_tags=("ia3",),
    ))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from peft import PeftConfig
from torch import nn

LOSSES = ("hmmc", "posapl", "harma")


@dataclass(frozen=True)
class MethodSpec:
    """What rsitr_hf needs to know about a method.

    Attributes:
        name: the recipe's ``method.name``.
        summary: a few words for ``--help`` and the docs.
        config_class: the PEFT config class; the recipe's ``method.config`` are its keyword arguments on top
            of ``config_defaults``. ``None`` for a method that trains (or only evaluates) the base model.
        config_defaults: keyword arguments of ``config_class`` that the recipe does not have to give.
        trainable_base: without a PEFT config, the top-level modules of the ``CLIPModel`` it trains
            (``None``: all of them; ``()``: none).
        losses: the losses it trains with (``loss.name``), the first one its default.
        pos_inputs: its text tower takes part-of-speech inputs (which ones: the config's ``pos_mode``).
        trains: ``False`` for a method that is evaluated as it is, without training (zero-shot).
        hub_tags: the model card's tags for it, beside rsitr_hf's own.
        card_text: a sentence of the model card saying what the method is.
    """

    name: str
    summary: str
    config_class: type[PeftConfig] | None = None
    config_defaults: Mapping[str, Any] = field(default_factory=dict)
    trainable_base: tuple[str, ...] | None = ()
    losses: tuple[str, ...] = LOSSES
    pos_inputs: bool = False
    trains: bool = True
    hub_tags: tuple[str, ...] = ()
    card_text: str = ""

    def __post_init__(self):
        object.__setattr__(self, "config_defaults", MappingProxyType(dict(self.config_defaults)))
        if not self.losses or set(self.losses) - set(LOSSES):
            raise ValueError(f"method {self.name}: losses must be a non-empty subset of {LOSSES}")

    @property
    def is_peft(self) -> bool:
        """Whether the method is a PEFT config applied with ``get_peft_model`` (saved as an adapter)."""
        return self.config_class is not None

    @property
    def trains_base_weights(self) -> bool:
        """Whether training changes weights of the base model itself (which then need float32)."""
        return self.trains and not self.is_peft and self.trainable_base != ()

    def make_config(self, **options) -> PeftConfig:
        """The method's PEFT config: ``config_defaults`` updated with ``options``."""
        if not self.is_peft:
            raise ValueError(f"{self.name} takes no options (it has no PEFT config)")
        return self.config_class(**{**self.config_defaults, **options})

    def select_trainable(self, base: nn.Module) -> nn.Module:
        """For a method without a PEFT config: ``base`` with only its ``trainable_base`` modules trainable."""
        for name, parameter in base.named_parameters():
            parameter.requires_grad_(self.trainable_base is None or name.split(".")[0] in self.trainable_base)
        return base

    def pos_mode(self, config: PeftConfig | None) -> str | None:
        """``"sentence"`` or ``"aligned"`` when the method's text tower takes POS inputs, else ``None``."""
        return config.pos_mode if self.pos_inputs and config is not None else None


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the method table (registering an equal spec again does nothing)."""
    known = METHODS.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"a different method is already registered as {spec.name!r}")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The spec of the method ``name``; a ``ValueError`` naming the known methods otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHODS)})") from None


def method_summaries() -> dict[str, str]:
    """``{name: summary}`` of every registered method, in registration order."""
    return {name: spec.summary for name, spec in METHODS.items()}


def method_of_config(config: PeftConfig) -> MethodSpec | None:
    """The method whose PEFT config ``config`` is (``None`` for a config no method declares)."""
    return next(
        (spec for spec in METHODS.values() if spec.is_peft and isinstance(config, spec.config_class)), None
    )
