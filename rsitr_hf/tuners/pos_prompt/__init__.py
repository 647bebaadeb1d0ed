"""POSAPL's part-of-speech-aware prompt tuner as a PEFT method (``PeftType.POS_PROMPT`` on import)."""

from ..registration import register_external_peft_method
from .config import PEFT_TYPE_NAME, POSPromptConfig
from .layer import Connector, POSAdapter, POSPromptTextTower, POSPromptVisionTower, SAAdapter, SideFusion
from .model import PREFIX, POSPromptModel

POS_PROMPT = register_external_peft_method(PEFT_TYPE_NAME.lower(), POSPromptConfig, POSPromptModel, PREFIX)

__all__ = [
    "POS_PROMPT",
    "Connector",
    "POSAdapter",
    "POSPromptConfig",
    "POSPromptModel",
    "POSPromptTextTower",
    "POSPromptVisionTower",
    "SAAdapter",
    "SideFusion",
]
