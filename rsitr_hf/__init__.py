"""rsitr_hf: parameter-efficient transfer learning for remote sensing image-text retrieval on the HF stack.

Importing the package registers its PEFT methods, so ``peft.get_peft_model`` and
``PeftModel.from_pretrained`` accept their configs and checkpoints, and fills the method table
(:mod:`rsitr_hf.tuners.methods`). The packages, bottom layer first (each imports only the ones before it):
``utils``, ``tuners`` (methods), ``objectives``, ``data``, ``evaluation``, ``training``, ``search``,
``demo``, ``tools``. They load on first use (``rsitr_hf.training``).
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

__version__ = "0.2.0"

PACKAGES = ("utils", "tuners", "objectives", "data", "evaluation", "training", "search", "demo", "tools")


def __getattr__(name: str):
    """``rsitr_hf.<package>`` without importing it first."""
    if name in PACKAGES:
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
