"""The method table: one :class:`MethodSpec` per method, declared beside the method and registered on import.

Everything outside a method that depends on which method a run uses reads its spec, never its name: recipe
validation and ``--help`` (``method.name`` and its choices, the losses it trains with and its default loss,
the ``text`` section of its text inputs), the training loop (the PEFT config or which base weights train,
float32 for base weights, the text inputs), the model card (tags, text, how to load it), and every command
that turns captions into model inputs (the kind of text inputs it names). A method's loss and text inputs are
declared beside their code, in the loss table (:mod:`rsitr_hf.objectives.table`) and the text-input table
(:mod:`rsitr_hf.data.text_inputs`); the spec names them. Adding a method is one :func:`register_method`
call (in a package that the ``rsitr_hf.methods`` entry points name, :mod:`rsitr_hf.utils.plugins`, for the
commands to find it); nothing else in rsitr_hf changes::

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

from ..utils.registry import Table

GENERIC_LOSSES = ("hmmc", "posapl")  # the losses of the loss table that any CLIP-like model trains with


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
        losses: the losses it trains with (names in the loss table, :mod:`rsitr_hf.objectives.table`), the
            first one its default.
        text_inputs: how captions become its text tower's inputs: a kind in the text-input table
            (:mod:`rsitr_hf.data.text_inputs`; ``tokens``, CLIP's tokenisation, by default).
        trains: ``False`` for a method that is evaluated as it is, without training (zero-shot).
        hub_tags: the model card's tags for it, beside rsitr_hf's own.
        card_text: a sentence of the model card saying what the method is.
    """

    name: str
    summary: str
    config_class: type[PeftConfig] | None = None
    config_defaults: Mapping[str, Any] = field(default_factory=dict)
    trainable_base: tuple[str, ...] | None = ()
    losses: tuple[str, ...] = GENERIC_LOSSES
    text_inputs: str = "tokens"
    trains: bool = True
    hub_tags: tuple[str, ...] = ()
    card_text: str = ""

    def __post_init__(self):
        object.__setattr__(self, "config_defaults", MappingProxyType(dict(self.config_defaults)))
        if not self.losses:
            raise ValueError(f"method {self.name}: name at least one loss it trains with")

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


METHODS: Table = Table("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the method table (registering an equal spec again does nothing)."""
    return METHODS.register(spec.name, spec)


def get_method(name: str) -> MethodSpec:
    """The spec of the method ``name``; a ``ValueError`` naming the known methods otherwise."""
    return METHODS.find(name)


def method_summaries() -> dict[str, str]:
    """``{name: summary}`` of every registered method, in registration order."""
    return METHODS.summaries()


def method_of_config(config: PeftConfig) -> MethodSpec | None:
    """The method whose PEFT config ``config`` is (``None`` for a config no method declares)."""
    classes = METHODS.each("config_class")
    return next((METHODS[name] for name, cls in classes.items() if cls and isinstance(config, cls)), None)
