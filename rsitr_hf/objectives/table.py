"""The loss table: one :class:`LossSpec` per training loss, declared beside its code and registered on import.

A loss is its name, its options (a dataclass whose fields, declared with
:func:`rsitr_hf.utils.config.option`, are the recipe's ``loss`` section for it, with their help and
defaults) and one function ``compute(model, batch, pixel_values, options) -> loss``: ``batch`` as the
training loader collates it (``batch["text"]``: the text tower's inputs, ``batch["image_ids"]``),
``pixel_values`` the batch's images, augmented and normalised on the device. The training step calls it
without knowing which loss it is; a method's spec names the losses it trains with. A loss of your own is one
:func:`register_loss` call (in a package found through the ``rsitr_hf.methods`` entry points,
:mod:`rsitr_hf.utils.plugins`, for the commands to know it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..utils.config import build
from ..utils.registry import Table


@dataclass
class NoOptions:
    """A loss without options."""


@dataclass(frozen=True)
class LossSpec:
    """What rsitr_hf needs to know about a loss.

    Attributes:
        name: the recipe's ``loss.name``.
        summary: a few words for ``--help``, the docs and the model card.
        compute: ``(model, batch, pixel_values, options) -> scalar loss`` (see the module docstring).
        options: the dataclass of its options (the recipe's ``loss`` section without ``name``).
    """

    name: str
    summary: str
    compute: Callable[[nn.Module, dict, torch.Tensor, Any], torch.Tensor]
    options: type = NoOptions

    def make_options(self, values: Mapping[str, Any] | None = None, prefix: str = "loss.") -> Any:
        """Its options from a mapping (the recipe's ``loss`` section without ``name``); an unknown key or a
        bad value is a ``RecipeError`` naming it."""
        return build(self.options, dict(values or {}), prefix, owner=self.name)


LOSSES: Table = Table("loss")


def register_loss(spec: LossSpec) -> LossSpec:
    """Add ``spec`` to the loss table (registering an equal spec again does nothing)."""
    return LOSSES.register(spec.name, spec)


def get_loss(name: str) -> LossSpec:
    """The spec of the loss ``name``; a ``ValueError`` naming the known losses otherwise."""
    return LOSSES.find(name)


def loss_summaries() -> dict[str, str]:
    """``{name: summary}`` of every registered loss, in registration order."""
    return LOSSES.summaries()


def loss_options() -> dict[str, type]:
    """``{name: options dataclass}`` of every registered loss (the recipe's ``--help`` lists them)."""
    return LOSSES.each("options")
