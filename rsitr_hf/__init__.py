"""rsitr_hf: parameter-efficient transfer learning for remote sensing image-text retrieval on the HF stack.

Importing the package registers its PEFT methods, so ``peft.get_peft_model`` and
``PeftModel.from_pretrained`` accept their configs and checkpoints.
"""

from .tuners import (
    MRS_ADAPTER,
    POS_PROMPT,
    MRSAdapterConfig,
    MRSAdapterModel,
    POSPromptConfig,
    POSPromptModel,
)

__version__ = "0.1.0"

__all__ = [
    "MRS_ADAPTER",
    "POS_PROMPT",
    "MRSAdapterConfig",
    "MRSAdapterModel",
    "POSPromptConfig",
    "POSPromptModel",
]
