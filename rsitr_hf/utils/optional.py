"""Optional dependencies: imported when a feature needs them, with one line saying how to install them."""

from __future__ import annotations

import importlib
import types

from .errors import InputError


class MissingDependency(InputError, ImportError):
    """A feature's optional dependency is not installed; the message says how to install it."""


def require(module: str, feature: str, package: str, extra: str) -> types.ModuleType:
    """The module ``module``, imported; a :class:`MissingDependency` naming ``feature``, the ``package`` to
    install and rsitr_hf's ``extra`` that brings it, when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(
            f'{feature} needs {package}: pip install {package} (or pip install -e ".[{extra}]")'
        ) from None
