"""PEFT tuners of rsitr_hf; importing this package registers them with peft."""

from .mrs_adapter import MRS_ADAPTER, MRSAdapterConfig, MRSAdapterModel
from .pos_prompt import POS_PROMPT, POSPromptConfig, POSPromptModel

__all__ = [
    "MRS_ADAPTER",
    "POS_PROMPT",
    "MRSAdapterConfig",
    "MRSAdapterModel",
    "POSPromptConfig",
    "POSPromptModel",
]
