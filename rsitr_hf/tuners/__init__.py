"""PEFT tuners of rsitr_hf and the method table; importing this package registers the tuners with peft and
every method (the tuners and the baselines) in :mod:`rsitr_hf.tuners.methods`."""

# the papers' methods first: the method table (and --help) lists methods in the order they register
from .mrs_adapter import MRS_ADAPTER, MRSAdapterConfig, MRSAdapterModel  # noqa: I001
from .pos_prompt import POS_PROMPT, POSPromptConfig, POSPromptModel
from .harma import HARMA, HarMAConfig, HarMAModel
from .bottleneck_adapter import BOTTLENECK_ADAPTER, BottleneckAdapterConfig, BottleneckAdapterModel
from .baselines import lora_baseline_config
from .base import NotMergeableError
from .methods import METHODS, MethodSpec, get_method, method_of_config, register_method

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
    "lora_baseline_config",
    "method_of_config",
    "register_method",
]
