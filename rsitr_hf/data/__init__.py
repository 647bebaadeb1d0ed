"""RSITR data: the seed layout, image folders and Hub datasets as ``datasets.DatasetDict``."""

from .hub_dataset import export_imagefolder, load_rsitr_hub
from .images import to_rgb
from .loading import CAPTION_FEATURES, FEATURES, explode_captions, load_rsitr, split_validation
from .seed_layout import Problem, RSITRDataError
from .validate import validate_rsitr

__all__ = [
    "CAPTION_FEATURES",
    "FEATURES",
    "Problem",
    "RSITRDataError",
    "explode_captions",
    "export_imagefolder",
    "load_rsitr",
    "load_rsitr_hub",
    "split_validation",
    "to_rgb",
    "validate_rsitr",
]
