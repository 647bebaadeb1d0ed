"""PEFT tuners of rsitr_hf; importing this package registers them with peft."""

from .bottleneck_adapter import BOTTLENECK_ADAPTER, BottleneckAdapterConfig, BottleneckAdapterModel
from .mrs_adapter import MRS_ADAPTER, MRSAdapterConfig, MRSAdapterModel
from .pos_prompt import POS_PROMPT, POSPromptConfig, POSPromptModel

__all__ = [
    "BOTTLENECK_ADAPTER",
    "BottleneckAdapterConfig",
    "BottleneckAdapterModel",
    "MRS_ADAPTER",
    "POS_PROMPT",
    "MRSAdapterConfig",
    "MRSAdapterModel",
    "POSPromptConfig",
    "POSPromptModel",
]
