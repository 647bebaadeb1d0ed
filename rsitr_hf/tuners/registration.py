"""Registering PEFT methods that live outside the peft package.

``peft.utils.register_peft_method`` only accepts names that are members of the closed ``PeftType``
enum, so the member is added first, through the enum's internal maps (``_member_map_``,
``_value2member_map_``, ``_member_names_``). Where a peft release changes that layout, registration stops
with :class:`RegistrationError` naming the peft version, instead of a half-registered method. Both steps
are idempotent: importing ``rsitr_hf`` twice, or reloading it, registers nothing twice.

Saved configs name their type ``"<NAME> (import rsitr_hf first)"`` (:func:`saved_peft_type`): loading an
adapter in a process that has not imported ``rsitr_hf`` fails in peft with ``KeyError: 'MRS_ADAPTER
(import rsitr_hf first)'``, which says what to do, rather than ``KeyError: 'MRS_ADAPTER'``. Both spellings
load once ``rsitr_hf`` is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import peft
from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType, register_peft_method

LOAD_HINT = " (import rsitr_hf first)"


class RegistrationError(RuntimeError):
    """This peft release does not accept methods registered the way rsitr_hf does."""

    def __init__(self, detail: str):
        super().__init__(
            f"rsitr_hf cannot register its PEFT methods with peft {peft.__version__}: {detail}. rsitr_hf "
            "extends peft's PeftType enum; install the peft version of rsitr_hf's requirements "
            "(pip install 'peft>=0.21') or report this peft release"
        )


def saved_peft_type(name: str) -> str:
    """How a saved ``adapter_config.json`` names the type ``name`` (see the module docstring)."""
    return name + LOAD_HINT


def add_peft_type(name: str) -> PeftType:
    """The ``PeftType`` member ``name`` (upper case), created when it does not exist yet."""
    if name in PeftType.__members__:
        return PeftType[name]
    keys = ("_member_map_", "_value2member_map_", "_member_names_")
    internals = {key: vars(PeftType).get(key) for key in keys}
    missing = [key for key, value in internals.items() if value is None]
    if missing:
        raise RegistrationError(f"PeftType has no {', '.join(missing)} (the enum's layout changed)")
    member_map, value_map, member_names = internals.values()
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    type.__setattr__(PeftType, name, member)
    member_map[name] = member
    value_map[name] = member
    member_names.append(name)
    if PeftType(name) is not member or PeftType[name] is not member or name not in list(PeftType):
        raise RegistrationError(f"the new PeftType member {name} is not found by lookups")
    return member


def register_external_peft_method(name: str, config_cls, model_cls, prefix: str) -> PeftType:
    """Add ``name.upper()`` to ``PeftType`` and register the tuner (and its saved type name), once."""
    peft_type = add_peft_type(name.upper())
    if peft_type not in PEFT_TYPE_TO_TUNER_MAPPING:
        try:
            register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
        except (TypeError, ValueError) as error:
            raise RegistrationError(f"register_peft_method refused {name!r}: {error}") from None
        PEFT_TYPE_TO_CONFIG_MAPPING[saved_peft_type(peft_type.value)] = config_cls
    return peft_type


@dataclass
class ExternalPeftConfig(PeftConfig):
    """Base of the rsitr_hf configs: ``peft_type`` is the member ``peft_type_name`` of ``PeftType``, saved
    as :func:`saved_peft_type`.

    Args (the fields every peft tuner has, with peft's meaning):
        init_weights: ``True`` (default): the last projection of every adapter branch starts at zero, so a
            fresh adapter leaves CLIP's outputs unchanged (as every method here is published); ``False``:
            ``nn.Linear``'s random initialisation there too, a non-identity start (peft's tests use it to
            make save/load round trips meaningful).
        modules_to_save: names of base-model modules (matched as peft matches them: the full name or its
            ending) trained and saved beside the adapter, e.g. ``["visual_projection", "text_projection"]``.
    """

    peft_type_name: ClassVar[str]
    init_weights: bool = field(
        default=True, metadata={"help": "True: adapters start as the identity; False: random (non-identity)"}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "base-model modules trained and saved with the adapter"}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = add_peft_type(self.peft_type_name)

    def to_dict(self) -> dict:
        values = super().to_dict()
        values["peft_type"] = saved_peft_type(self.peft_type_name)
        return values
