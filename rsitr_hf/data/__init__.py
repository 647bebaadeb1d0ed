"""RSITR data: the seed layout, image folders and Hub datasets as ``datasets.DatasetDict``, and the text-input
table (how captions become a method's text-tower inputs; importing the package registers its kinds)."""

from .hub_dataset import export_imagefolder, load_rsitr_hub
from .images import to_rgb
from .loading import CAPTION_FEATURES, FEATURES, explode_captions, load_rsitr, split_validation
from .pos_inputs import POSTextInputs, POSTextOptions
from .seed_layout import Problem, RSITRDataError
from .text_inputs import (
    TEXT_INPUTS,
    TextInputs,
    adapter_text_inputs,
    get_text_inputs,
    register_text_inputs,
    text_inputs_of,
)
from .validate import validate_rsitr

__all__ = [
    "CAPTION_FEATURES",
    "FEATURES",
    "POSTextInputs",
    "POSTextOptions",
    "Problem",
    "RSITRDataError",
    "TEXT_INPUTS",
    "TextInputs",
    "adapter_text_inputs",
    "explode_captions",
    "export_imagefolder",
    "get_text_inputs",
    "load_rsitr",
    "load_rsitr_hub",
    "register_text_inputs",
    "split_validation",
    "text_inputs_of",
    "to_rgb",
    "validate_rsitr",
]
