"""peft's own test suite, run on the rsitr_hf tuners.

The test files of the installed peft version (``testing_common.py``, ``testing_utils.py``,
``test_custom_models.py``, ``test_feature_extraction_models.py``) come from its source distribution on the
package registry (downloaded once into ``$RSITR_PEFT_TESTS_DIR``, default ``~/.cache/rsitr_hf/peft-tests``;
this module is skipped, with that reason, when they cannot be had). Their two ``PeftCommonTester`` classes
run here with their test bodies unchanged: every test that peft parametrizes over its methods' configs is
re-parametrized with a tiny ``CLIPModel`` and every rsitr_hf tuner of the method table
(:data:`SMALL_OPTIONS`); tests of peft's own methods on peft's own toy models are left out. What these
tuners cannot do by design is marked not applicable, with the reason (:data:`NOT_APPLICABLE`), never by
changing an assertion. ``python -m pytest tests/test_peft_suite.py -rs`` lists every skip and its reason.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import conftest
import peft
import pytest
import torch
from torch import nn
from transformers import CLIPModel

from rsitr_hf.tuners.base import NotMergeableError
from rsitr_hf.tuners.methods import METHODS
from rsitr_hf.tuners.registration import ExternalPeftConfig

PEFT_TEST_FILES = (
    "testing_common.py",
    "testing_utils.py",
    "test_custom_models.py",
    "test_feature_extraction_models.py",
)
PACKAGE = "peft_tests"

# small options of every rsitr_hf tuner for the tiny CLIP (2 blocks a tower, widths 48 / 32)
SMALL_OPTIONS = {
    "mrs_adapter": {"bottleneck_dim": 16, "shared_dim": 8},
    "bottleneck_adapter": {"bottleneck_dim": 8},
    "pos_prompt": {
        "adapter_dim": 16,
        "adapter_heads": 2,
        "pos_adapter_dim": 8,
        "fusion_layers": [1, 1, 2, 2],
    },
    "harma": {"bottleneck_dim": 16, "heads": 2, "mini_dim": 8, "mini_heads": 2},
}
TUNERS = {
    name: spec
    for name, spec in METHODS.items()
    if spec.is_peft and issubclass(spec.config_class, ExternalPeftConfig)
}
POS_INPUT_CONFIGS = {spec.config_class for spec in TUNERS.values() if spec.text_inputs == "pos_tags"}

# peft's tests that merge: they run up to merge_adapter() / merge_and_unload(), which must refuse
MERGING_TESTS = {
    "test_merge_layers",
    "test_merge_layers_fp16",
    "test_merge_layers_is_idempotent",
    "test_merge_layers_is_deterministic_in_train_mode",
    "test_merge_layers_dtype_device_conversion",  # peft 0.22
    "test_merge_layers_load_state_dict",  # peft 0.22
    "test_merge_layers_modules_to_save_selection",  # peft 0.22
    "test_safe_merge",
    "test_disable_adapters_with_merging",
    "test_delete_merged_adapter_raises_without_mutation",
    "test_delete_merged_adapter_only_rejects_the_merged_one",
    "test_forward_float16",
    "test_forward_bfloat16",
    "test_forward_float16_no_autocast",
    "test_forward_bfloat16_no_autocast",
}
MERGING = (
    "not applicable: merging (the adapters are non-linear branches, not weight deltas): the test runs up to "
    "merging, which must refuse with NotMergeableError"
)
HARMA_TEMPERATURE = (
    "not applicable: HarMA's ITC temperature is a trainable adapter parameter that only its loss uses "
    "(rsitr_hf.objectives.harma_loss), while this test trains CLIP's forward output and expects a gradient "
    "on every trainable parameter"
)
# {test: {method: reason}}, "*" for every method
NOT_APPLICABLE = {
    "test_in_features_out_features_exposed": {
        "pos_prompt": "not applicable: in_features / out_features (POSAPL's tuner layers wrap whole towers, "
        "which map pixels or token ids to features)"
    },
    "test_prepare_for_training_parametrized": {
        "*": "not applicable: get_input_embeddings (prepare_model_for_kbit_training): a CLIPModel has two "
        "towers and no single input embedding, and transformers raises NotImplementedError for it"
    },
    "test_conv2d_padding": {
        "*": "not applicable: the test (peft 0.22) adapts peft's own toy ModelConv2D, which has no CLIP "
        "towers for the rsitr_hf tuners to adapt"
    },
    "test_training": {"harma": HARMA_TEMPERATURE},
    "test_training_custom_models": {"harma": HARMA_TEMPERATURE},
    "test_training_gradient_checkpointing": {"harma": HARMA_TEMPERATURE},
    "test_only_params_are_updated": {"harma": HARMA_TEMPERATURE},
}


def peft_test_sources() -> Path:
    """The directory holding :data:`PEFT_TEST_FILES` of the installed peft version, downloaded from the
    package registry (``pip download peft==<version> --no-binary :all:``) when not there yet."""
    root = Path(os.environ.get("RSITR_PEFT_TESTS_DIR", Path.home() / ".cache" / "rsitr_hf" / "peft-tests"))
    target = root / f"peft-{peft.__version__}" / PACKAGE
    if all((target / name).is_file() for name in PEFT_TEST_FILES):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as download:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run(
            [*command, "--dest", download, f"peft=={peft.__version__}"], capture_output=True, text=True
        )
        archives = list(Path(download).glob("peft-*.tar.gz"))
        if done.returncode or not archives:
            reason = (done.stderr.strip().splitlines() or ["no source distribution"])[-1]
            pytest.skip(
                f"peft {peft.__version__}'s test files could not be downloaded from the package registry "
                f"(pip download: {reason})",
                allow_module_level=True,
            )
        staging = Path(download) / PACKAGE
        staging.mkdir()
        with tarfile.open(archives[0]) as archive:
            for name in PEFT_TEST_FILES:
                member = archive.getmember(f"peft-{peft.__version__}/tests/{name}")
                (staging / name).write_bytes(archive.extractfile(member).read())
        (staging / "__init__.py").write_text("")
        target.parent.mkdir(exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def import_peft_tests():
    """peft's two test modules, imported as the package ``peft_tests`` (their imports are relative)."""
    sources = peft_test_sources()
    sys.path.insert(0, str(sources.parent))
    stubbed = importlib.util.find_spec("diffusers") is None
    if stubbed:
        # testing_common imports StableDiffusionPipeline for peft's Stable Diffusion tests, none of which run
        # here; without diffusers, a stand-in module serves that import and is removed right after it
        stub = types.ModuleType("diffusers")
        stub.StableDiffusionPipeline = None
        sys.modules["diffusers"] = stub
    try:
        return (
            importlib.import_module(f"{PACKAGE}.test_custom_models"),
            importlib.import_module(f"{PACKAGE}.test_feature_extraction_models"),
        )
    finally:
        if stubbed:
            del sys.modules["diffusers"]


custom_models, feature_extraction = import_peft_tests()


def save_tiny_clip_for_suite() -> str:
    """The tiny CLIP of the test suite, saved to a directory that lives as long as this process."""
    from rsitr_hf.demo.synthetic import vocabulary
    from rsitr_hf.demo.tiny_clip import save_tiny_clip

    directory = tempfile.mkdtemp(prefix="rsitr-peft-suite-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return str(save_tiny_clip(directory, vocabulary(), seed=0))


MODEL_ID = save_tiny_clip_for_suite()


class CLIPLogits(nn.Module):
    """The tiny CLIP as a custom model of peft's custom-model tests (a plain module, as their toy models are):
    ``forward`` returns a tensor, CLIP's ``(B_images, B_texts)`` image-to-text logits, which those tests
    compare with ``torch.allclose`` and train with ``.sum()`` or ``nll_loss``."""

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.clip = clip

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: torch.dtype | None = None) -> CLIPLogits:
        return cls(CLIPModel.from_pretrained(model_id, dtype=dtype or torch.float32))

    def forward(self, **inputs) -> torch.Tensor:
        return self.clip(**inputs).logits_per_image


def tiny_inputs(config_cls, device) -> dict[str, torch.Tensor]:
    """Four images and four captions for the tiny CLIP (with their POS sentences for a POS-input method)."""
    pixel_values, input_ids = conftest.tiny_inputs(batch=4)
    inputs = {"pixel_values": pixel_values, "input_ids": input_ids}
    if config_cls in POS_INPUT_CONFIGS:
        inputs["pos_input_ids"] = input_ids.flip(1)
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def cases(argnames: tuple[str, ...], test: str) -> list:
    """``pytest.param`` rows for peft's parametrization ``argnames`` of ``test``: one per tuner (the tiny CLIP
    is the ``model_id``), marked as :func:`marks` says."""
    values = {"model_id": lambda name: MODEL_ID, "test_name": lambda name: name}
    values |= {"config_cls": lambda name: TUNERS[name].config_class}
    values |= {"config_kwargs": lambda name: dict(SMALL_OPTIONS[name])}
    if argnames == ("model_id",):
        return [pytest.param(MODEL_ID, id="tiny-clip")]
    return [
        pytest.param(*(values[argname](name) for argname in argnames), id=name, marks=marks(test, name))
        for name in TUNERS
    ]


def marks(test: str, method: str) -> list:
    """How peft's ``test`` is marked for ``method``: merging refused (xfail, strict, on NotMergeableError
    alone), not applicable (skipped, with the reason) or nothing."""
    if test in MERGING_TESTS:
        return [pytest.mark.xfail(raises=NotMergeableError, strict=True, reason=MERGING)]
    reasons = NOT_APPLICABLE.get(test, {})
    reason = reasons.get(method, reasons.get("*"))
    return [pytest.mark.skip(reason=reason)] if reason else []


def parametrized_names(mark: pytest.Mark) -> tuple[str, ...]:
    """The argument names of a ``parametrize`` mark, given as ``"a, b"`` or as a sequence (peft 0.22)."""
    names = mark.args[0]
    return tuple(name.strip() for name in (names.split(",") if isinstance(names, str) else names))


def reparametrized(test: types.FunctionType):
    """A copy of peft's ``test`` (the same code) whose parametrization over peft's methods is replaced by
    :func:`cases`; ``None`` for a test without one (peft's tests of its own methods)."""
    ours = {"test_name", "model_id", "config_cls", "config_kwargs"}
    kept, replaced = [], False
    for mark in getattr(test, "pytestmark", []):
        argnames = parametrized_names(mark) if mark.name == "parametrize" else ()
        if set(argnames) & ours:
            if not set(argnames) <= ours or argnames == ("config_cls",):
                return None  # a test of peft's config classes on peft's own toy models
            kept.append(pytest.mark.parametrize(mark.args[0], cases(argnames, test.__name__)).mark)
            replaced = True
        else:
            kept.append(mark)
    if not replaced:
        return None
    copy = types.FunctionType(
        test.__code__, test.__globals__, test.__name__, test.__defaults__, test.__closure__
    )
    copy.__dict__.update(test.__dict__)
    copy.__kwdefaults__ = test.__kwdefaults__
    copy.pytestmark = kept
    return copy


def on_tiny_clip(tester: type) -> dict:
    """Class attributes that re-parametrize every test of peft's ``tester`` (left-out tests become ``None``,
    which pytest does not collect)."""
    return {
        name: reparametrized(getattr(tester, name))
        for name in dir(tester)
        if name.startswith("test_") and callable(getattr(tester, name))
    }


class OnTinyCLIP:
    """What the two testers share here: the inputs of the tiny CLIP for the method of the running test."""

    @pytest.fixture(autouse=True)
    def method_of_test(self, request):
        callspec = getattr(request.node, "callspec", None)
        self.config_cls = callspec.params.get("config_cls") if callspec else None

    def prepare_inputs_for_testing(self):
        return tiny_inputs(self.config_cls, self.torch_device)


TestPeftCustomModelOnCLIP = type(
    "TestPeftCustomModelOnCLIP",
    (OnTinyCLIP, custom_models.TestPeftCustomModel),
    {**on_tiny_clip(custom_models.TestPeftCustomModel), "transformers_class": CLIPLogits},
)
TestPeftFeatureExtractionOnCLIP = type(
    "TestPeftFeatureExtractionOnCLIP",
    (OnTinyCLIP, feature_extraction.TestPeftFeatureExtractionModel),
    {**on_tiny_clip(feature_extraction.TestPeftFeatureExtractionModel), "transformers_class": CLIPModel},
)


def test_every_rsitr_tuner_has_small_options():
    assert set(TUNERS) == set(SMALL_OPTIONS)
