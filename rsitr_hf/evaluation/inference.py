"""Inference with a trained model: a CLIP base with an optional PEFT adapter, its processor and its method's
text inputs, loaded once (:class:`RetrievalModel`), embedding images and captions; and its identity (names,
and a fingerprint of its weights), which a search index records and every later use checks. Search, the web
page, the audit's embedding method, zero-shot classification and the PETL harness load models here."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..data.text_inputs import adapter_text_inputs
from ..tuners import method_of_config
from ..utils.distributed import default_device
from ..utils.errors import AdapterFileError, InputError, first_line
from .embedding import image_embeddings, text_embeddings

PROBE_CAPTION = "an aerial image of a river next to green fields and a road"
FINGERPRINT_TOLERANCE = 1e-3  # identical weights on another device or library version stay within this
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"  # peft's pickled format: never loaded


class ModelLoadError(InputError, ValueError):
    """A base model that cannot be loaded (no such folder or Hub id, not a model)."""


@dataclass
class ModelIdentity:
    """Which model embedded an index: names, and the embeddings of a fixed probe image and caption."""

    base_model: str
    adapter: str | None
    fingerprint: list[float] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.base_model}" + (f" + adapter {self.adapter}" if self.adapter else " (no adapter)")

    def matches(self, other: ModelIdentity) -> bool:
        if (self.base_model, self.adapter) != (other.base_model, other.adapter):
            return False
        mine, theirs = np.asarray(self.fingerprint), np.asarray(other.fingerprint)
        return mine.shape == theirs.shape and bool(np.abs(mine - theirs).max() <= FINGERPRINT_TOLERANCE)


def model_name(name_or_path: str | os.PathLike) -> str:
    """A local folder as its absolute path; a Hub id as it is."""
    return str(Path(name_or_path).resolve()) if Path(name_or_path).exists() else str(name_or_path)


def adapter_or_base_processor(base_model: str | os.PathLike, adapter: str | os.PathLike | None):
    """The processor saved beside the adapter (a training run saves its own, e.g. the releases' plain resize
    of ``data.image_preprocessing: paper``), else the base model's."""
    from transformers import CLIPProcessor

    if adapter is not None:
        try:
            return CLIPProcessor.from_pretrained(adapter)
        except (OSError, ValueError, TypeError):  # no processor there: an adapter saved on its own
            pass
    return CLIPProcessor.from_pretrained(base_model)


class RetrievalModel:
    """A CLIP base model with an optional PEFT adapter, embedding images and captions as unit vectors; the
    captions become the text inputs the adapter was trained with (its method's kind, as its folder records
    them: POSAPL's tagger, for one)."""

    def __init__(
        self,
        base_model: str | os.PathLike,
        adapter: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
    ):
        from transformers import CLIPModel

        device = device or default_device()
        try:
            model = CLIPModel.from_pretrained(base_model)
        except OSError as error:  # no such folder or Hub id, or not a model
            raise ModelLoadError(f"--model {base_model}: {first_line(error)}") from None
        if adapter is not None:
            with warnings.catch_warnings():  # transformers' deprecation notice, triggered inside peft
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                model = load_adapter(model, adapter)
        self.model = model.to(device).eval().requires_grad_(False)
        config = getattr(self.model, "peft_config", {}).get("default")
        self.method = method_of_config(config) if config is not None else None  # None: the base alone
        self.processor = adapter_or_base_processor(base_model, adapter)
        self.text_inputs = adapter_text_inputs(self.method, adapter, self.processor.tokenizer, config)
        self.identity = ModelIdentity(model_name(base_model), model_name(adapter) if adapter else None)
        self.identity.fingerprint = self.probe_fingerprint()

    @torch.no_grad()
    def embed_images(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        """``(N, D)`` unit-norm float32 embeddings of ``images``."""
        return image_embeddings(self.model, self.processor.image_processor, images).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """``(N, D)`` unit-norm float32 embeddings of ``texts`` (as the adapter's text inputs)."""
        return text_embeddings(self.model, self.text_inputs(texts)).cpu()

    def probe_fingerprint(self) -> list[float]:
        """Embeddings of a fixed colour-ramp image and of ``PROBE_CAPTION``."""
        size = self.processor.image_processor.crop_size["height"]
        ramp = np.linspace(0, 255, size * size * 3).reshape(size, size, 3).astype(np.uint8)
        probes = [self.embed_images([PIL.Image.fromarray(ramp)])[0], self.embed_texts([PROBE_CAPTION])[0]]
        return [round(value, 6) for value in torch.cat(probes).tolist()]


def load_adapter(model, adapter: str | os.PathLike):
    """``PeftModel.from_pretrained(model, adapter)``, with an :class:`AdapterFileError` naming the file (and
    field) when an adapter folder cannot be read (:func:`check_adapter_folder`), or naming the adapter when
    a Hub download cannot. Pickled weights are never loaded."""
    from peft import PeftModel
    from safetensors import SafetensorError

    if Path(adapter).is_dir():
        check_adapter_folder(Path(adapter))
    try:
        return PeftModel.from_pretrained(model, adapter)
    except pickle.UnpicklingError:  # a Hub adapter with pickled weights only: torch refused to run them
        raise AdapterFileError(pickled_refusal(f"--adapter {adapter}: {PICKLED_WEIGHTS}")) from None
    except (OSError, ValueError, KeyError, SafetensorError, json.JSONDecodeError) as error:
        hint = " (a PEFT type rsitr_hf and peft do not know)" if isinstance(error, KeyError) else ""
        raise AdapterFileError(
            f"--adapter {adapter}: not a loadable adapter{hint}: {first_line(error)}"
        ) from None


def check_adapter_folder(folder: Path) -> None:
    """Refuse, before peft reads it, an adapter folder whose ``adapter_config.json`` is not JSON or names a
    ``peft_type`` that neither peft nor rsitr_hf registers, or whose weights are pickled
    (``adapter_model.bin`` alone: never unpickled, as unpickling can run code) or are not a readable
    safetensors file; each error names the file (and field)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from safetensors import safe_open

    config_file, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_file.is_file():
        raise AdapterFileError(f"--adapter {folder}: no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterFileError(f"{config_file}: not valid JSON ({error})") from None
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise AdapterFileError(
            f"{config_file}: field peft_type: {peft_type!r} is not a PEFT type that peft or rsitr_hf "
            "registers (expected one of peft.PeftType's values, e.g. LORA or MRS_ADAPTER)"
        )
    if not weights.is_file():
        if (folder / PICKLED_WEIGHTS).is_file():
            raise AdapterFileError(pickled_refusal(str(folder / PICKLED_WEIGHTS)))
        raise AdapterFileError(f"--adapter {folder}: no {ADAPTER_WEIGHTS} (the adapter's weights)")
    try:
        with safe_open(str(weights), framework="pt") as opened:
            opened.keys()
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise AdapterFileError(f"{weights}: not a readable safetensors file ({first_line(error)})") from None


def pickled_refusal(where: str) -> str:
    return (
        f"{where} is a pickled weights file, which rsitr_hf does not load (unpickling can run code); save "
        f"the adapter as safetensors ({ADAPTER_WEIGHTS}, save_pretrained's default)"
    )
