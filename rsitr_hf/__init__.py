"""rsitr_hf: parameter-efficient transfer learning for remote sensing image-text retrieval on the HF stack.

Importing the package registers its PEFT methods, so ``peft.get_peft_model`` and
``PeftModel.from_pretrained`` accept their configs and checkpoints.
"""

from .tuners import (
    BOTTLENECK_ADAPTER,
    MRS_ADAPTER,
    POS_PROMPT,
    BottleneckAdapterConfig,
    BottleneckAdapterModel,
    MRSAdapterConfig,
    MRSAdapterModel,
    POSPromptConfig,
    POSPromptModel,
)

__version__ = "0.1.0"

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
