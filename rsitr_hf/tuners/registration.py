"""Registering PEFT methods that live outside the peft package.

``peft.utils.register_peft_method`` only accepts names that are members of the closed ``PeftType``
enum, so the member is added first. Both steps are idempotent: importing ``rsitr_hf`` twice, or
reloading it, registers nothing twice.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType, register_peft_method


def add_peft_type(name: str) -> PeftType:
    """The ``PeftType`` member ``name`` (upper case), created when it does not exist yet."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


def register_external_peft_method(name: str, config_cls, model_cls, prefix: str) -> PeftType:
    """Add ``name.upper()`` to ``PeftType`` and register the tuner, once."""
    peft_type = add_peft_type(name.upper())
    if peft_type not in PEFT_TYPE_TO_TUNER_MAPPING:
        register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
    return peft_type
