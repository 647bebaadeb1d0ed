"""PE-RSITR's MRS-Adapter as a PEFT method (registered as ``PeftType.MRS_ADAPTER`` and as the method
``mrs_adapter`` on import)."""

from ..methods import MethodSpec, register_method
from ..registration import register_external_peft_method
from .config import PEFT_TYPE_NAME, MRSAdapterConfig
from .layer import MRSAdapter, MRSAdapterEncoderLayer
from .model import PREFIX, MRSAdapterModel

MRS_ADAPTER = register_external_peft_method(PEFT_TYPE_NAME.lower(), MRSAdapterConfig, MRSAdapterModel, PREFIX)
METHOD = register_method(
    MethodSpec(
        name="mrs_adapter",
        summary="PE-RSITR's MRS-Adapter",
        config_class=MRSAdapterConfig,
        hub_tags=("mrs-adapter", "pe-rsitr"),
        card_text="PE-RSITR's MRS-Adapter: one adapter shared by every block of both CLIP towers, with "
        "per-modality projections and a cross-modal shared up-projection.",
    )
)

__all__ = ["MRS_ADAPTER", "MRSAdapter", "MRSAdapterConfig", "MRSAdapterEncoderLayer", "MRSAdapterModel"]
