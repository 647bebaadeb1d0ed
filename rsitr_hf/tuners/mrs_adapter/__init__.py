"""PE-RSITR's MRS-Adapter as a PEFT method (registered as ``PeftType.MRS_ADAPTER`` on import)."""

from ..registration import register_external_peft_method
from .config import PEFT_TYPE_NAME, MRSAdapterConfig
from .layer import MRSAdapter, MRSAdapterEncoderLayer
from .model import PREFIX, MRSAdapterModel

MRS_ADAPTER = register_external_peft_method(PEFT_TYPE_NAME.lower(), MRSAdapterConfig, MRSAdapterModel, PREFIX)

__all__ = ["MRS_ADAPTER", "MRSAdapter", "MRSAdapterConfig", "MRSAdapterEncoderLayer", "MRSAdapterModel"]
