"""HarMA's gated multimodal adapters as a PEFT method (registered as ``PeftType.HARMA`` and as the method
``harma`` on import)."""

from ..methods import MethodSpec, register_method
from ..registration import register_external_peft_method
from .config import PEFT_TYPE_NAME, HarMAConfig
from .layer import GatedMultimodalAdapter, HarMAEncoderLayer, MiniAdapter
from .model import PREFIX, HarMAModel, open_clip_ids, trainable_temperature

HARMA = register_external_peft_method(PEFT_TYPE_NAME.lower(), HarMAConfig, HarMAModel, PREFIX)
METHOD = register_method(
    MethodSpec(
        name="harma",
        summary="HarMA's gated multimodal adapters",
        config_class=HarMAConfig,
        losses=("harma",),
        hub_tags=("harma",),
        card_text="HarMA: a gated multimodal adapter (bottleneck, self-attention applied twice with one set "
        "of weights, a mini adapter in the text tower, gated mixes) on the MLP output of every block of both "
        "towers, and a trainable ITC temperature, as in the release (seekerhuang/HarMA).",
    )
)

__all__ = [
    "HARMA",
    "GatedMultimodalAdapter",
    "HarMAConfig",
    "HarMAEncoderLayer",
    "HarMAModel",
    "MiniAdapter",
    "open_clip_ids",
    "trainable_temperature",
]
