"""A classic per-layer bottleneck adapter (Houlsby-style) as a PEFT method, the PETL harness's adapter
baseline (registered as ``PeftType.BOTTLENECK_ADAPTER`` and as the method ``bottleneck_adapter`` on
import)."""

from ..methods import MethodSpec, register_method
from ..registration import register_external_peft_method
from .config import PEFT_TYPE_NAME, BottleneckAdapterConfig
from .layer import BottleneckAdapter, BottleneckAdapterEncoderLayer
from .model import PREFIX, BottleneckAdapterModel

BOTTLENECK_ADAPTER = register_external_peft_method(
    PEFT_TYPE_NAME.lower(), BottleneckAdapterConfig, BottleneckAdapterModel, PREFIX
)
METHOD = register_method(
    MethodSpec(
        name="bottleneck_adapter",
        summary="Houlsby-style bottleneck adapters in every block",
        config_class=BottleneckAdapterConfig,
        hub_tags=("bottleneck-adapter", "houlsby"),
        card_text="Houlsby-style bottleneck adapters after the attention and the MLP of every block of both "
        "towers.",
    )
)

__all__ = [
    "BOTTLENECK_ADAPTER",
    "BottleneckAdapter",
    "BottleneckAdapterConfig",
    "BottleneckAdapterEncoderLayer",
    "BottleneckAdapterModel",
]
