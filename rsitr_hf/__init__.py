"""rsitr_hf: parameter-efficient transfer learning for remote sensing image-text retrieval on the HF stack.

Importing the package registers its PEFT methods, so ``peft.get_peft_model`` and
``PeftModel.from_pretrained`` accept their configs and checkpoints, and fills the method table
(:mod:`rsitr_hf.tuners.methods`). The packages, bottom layer first (each imports only the ones before it):
``utils``, ``tuners`` (methods), ``objectives``, ``data``, ``evaluation``, ``training``, ``search``,
``demo``, ``tools``. They load on first use (``rsitr_hf.training``); the module paths of rsitr_hf 0.1
(``rsitr_hf.losses``, ``rsitr_hf.recipe`` ...) still work, with a warning naming the new one.
"""

import importlib

from .tuners import (
    BOTTLENECK_ADAPTER,
    HARMA,
    METHODS,
    MRS_ADAPTER,
    POS_PROMPT,
    BottleneckAdapterConfig,
    BottleneckAdapterModel,
    HarMAConfig,
    HarMAModel,
    MethodSpec,
    MRSAdapterConfig,
    MRSAdapterModel,
    NotMergeableError,
    POSPromptConfig,
    POSPromptModel,
    get_method,
    register_method,
)
from .utils.deprecation import MOVED_MODULES, install_moved_module_finder

__version__ = "0.1.0"

PACKAGES = ("utils", "tuners", "objectives", "data", "evaluation", "training", "search", "demo", "tools")

install_moved_module_finder()


def __getattr__(name: str):
    """``rsitr_hf.<package>`` (and a module path of 0.1, with its warning) without importing it first."""
    if name in PACKAGES or f"{__name__}.{name}" in MOVED_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BOTTLENECK_ADAPTER",
    "BottleneckAdapterConfig",
    "BottleneckAdapterModel",
    "HARMA",
    "HarMAConfig",
    "HarMAModel",
    "METHODS",
    "MRS_ADAPTER",
    "MRSAdapterConfig",
    "MRSAdapterModel",
    "MethodSpec",
    "NotMergeableError",
    "POS_PROMPT",
    "POSPromptConfig",
    "POSPromptModel",
    "get_method",
    "register_method",
]
