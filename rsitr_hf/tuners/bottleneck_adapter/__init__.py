"""A classic per-layer bottleneck adapter (Houlsby-style) as a PEFT method, the PETL harness's adapter
baseline (registered as ``PeftType.BOTTLENECK_ADAPTER`` on import)."""

from ..registration import register_external_peft_method
from .config import PEFT_TYPE_NAME, BottleneckAdapterConfig
from .layer import BottleneckAdapter, BottleneckAdapterEncoderLayer
from .model import PREFIX, BottleneckAdapterModel

BOTTLENECK_ADAPTER = register_external_peft_method(
    PEFT_TYPE_NAME.lower(), BottleneckAdapterConfig, BottleneckAdapterModel, PREFIX
)

__all__ = [
    "BOTTLENECK_ADAPTER",
    "BottleneckAdapter",
    "BottleneckAdapterConfig",
    "BottleneckAdapterEncoderLayer",
    "BottleneckAdapterModel",
]
