"""Methods, losses and text inputs declared outside rsitr_hf.

An installed package makes its declarations known to every rsitr_hf command and to the library by naming a
module (or a function) in the entry-point group ``rsitr_hf.methods`` of its package metadata::

    # pyproject.toml of the package that declares them
    [project.entry-points."rsitr_hf.methods"]
    my_method = "my_package.rsitr_method"

:func:`load_plugins` imports each such module (or calls each such function) once per process, the first
time one of the tables (methods, losses, text inputs) is read; the module declares what it brings with
``register_method``, ``register_loss`` and ``register_text_inputs``, as rsitr_hf's own methods do.
"""

from __future__ import annotations

import importlib.metadata
import types

from .errors import InputError, first_line

ENTRY_POINT_GROUP = "rsitr_hf.methods"


class PluginError(InputError, RuntimeError):
    """An installed package's declarations could not be loaded; the message names its entry point."""


class PluginState:
    loaded = False


def load_plugins() -> None:
    """Import the modules (call the functions) of the ``rsitr_hf.methods`` entry points, once."""
    if PluginState.loaded:
        return
    PluginState.loaded = True  # first: a declaration reading a table while it loads must not load it again
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            declared = entry_point.load()
            if callable(declared) and not isinstance(declared, types.ModuleType):
                declared()
        except Exception as error:
            raise PluginError(
                f"entry point {entry_point.name} = {entry_point.value} (group {ENTRY_POINT_GROUP}, of the "
                f"installed package {getattr(entry_point.dist, 'name', 'unknown')}) failed to load: "
                f"{first_line(error)}"
            ) from error
