"""POSAPL's part-of-speech-aware prompt tuner as a PEFT method (registered as ``PeftType.POS_PROMPT`` and as
the method ``pos_prompt`` on import)."""

from ..methods import MethodSpec, register_method
from ..registration import register_external_peft_method
from .config import PEFT_TYPE_NAME, POSPromptConfig
from .layer import Connector, POSAdapter, POSPromptTextTower, POSPromptVisionTower, SAAdapter, SideFusion
from .model import PREFIX, POSPromptModel

POS_PROMPT = register_external_peft_method(PEFT_TYPE_NAME.lower(), POSPromptConfig, POSPromptModel, PREFIX)
METHOD = register_method(
    MethodSpec(
        name="pos_prompt",
        summary="POSAPL's part-of-speech-aware prompt learning",
        config_class=POSPromptConfig,
        losses=("posapl",),
        text_inputs="pos_tags",
        hub_tags=("posapl",),
        card_text="POSAPL: part-of-speech-aware prompt learning (a Connector and POS-Adapters bring the "
        "captions' POS prior into the text tower; SA-Adapters in both towers; Side Fusion). Its text tower "
        "takes POS inputs (`pos_input_ids` or `pos_tag_ids`) from the stanza tagger that `text_inputs.json` "
        "names.",
    )
)

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
