"""PEFT tuners of rsitr_hf; importing this package registers them with peft."""

from .mrs_adapter import MRS_ADAPTER, MRSAdapterConfig, MRSAdapterModel

__all__ = ["MRS_ADAPTER", "MRSAdapterConfig", "MRSAdapterModel"]
