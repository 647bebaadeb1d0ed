import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# image caches of the test runs (and of the processes they start) stay out of ~/.cache/rsitr_hf
TEST_CACHE = None if "RSITR_CACHE" in os.environ else tempfile.mkdtemp(prefix="rsitr-test-cache-")
os.environ.setdefault("RSITR_CACHE", TEST_CACHE or "")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from rsitr_hf.data.reference import splits_dir, ud_english_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPLITS_DIR = splits_dir()  # the packaged split files (or $RSITR_SHARED_DIR/rsitr_splits)
UD_ENGLISH_DIR = ud_english_dir()  # the packaged UD English-EWT portions (or $RSITR_SHARED_DIR/...)


def pytest_unconfigure(config) -> None:
    if TEST_CACHE:
        shutil.rmtree(TEST_CACHE, ignore_errors=True)


def pytest_configure(config) -> None:
    if not (SPLITS_DIR / "rsicd_precomp" / "test_caps.txt").is_file():
        raise pytest.UsageError(
            f"RSITR_SHARED_DIR is set, but {SPLITS_DIR} holds no rsicd_precomp/test_caps.txt"
        )


# a guard against a hung subprocess, never a speed limit: a loaded machine is slow, not wrong
HANG_TIMEOUT = 3600

# two real gloo processes on a CPU-only machine (the scripts must create Accelerator(cpu=True))
TWO_PROCESS_LAUNCH = [
    "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from rsitr_hf.demo.synthetic import vocabulary
    from rsitr_hf.demo.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), vocabulary(), seed=0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from rsitr_hf.demo.synthetic import write_seed_layout

    return write_seed_layout(
        tmp_path_factory.mktemp("synthetic"), "synthrs", num_train=30, num_test=12, seed=0, image_size=32
    )


@pytest.fixture(scope="session")
def stanza_tagger_path() -> Path:
    """A small UPOS tagger trained by stanza's own trainer on UD English-EWT test (about 3 minutes on 2
    cores), cached between runs in ~/.cache/rsitr_hf (or $RSITR_TEST_CACHE)."""
    from rsitr_hf.data.pos_tagger import train_small_tagger

    cache = Path(os.environ.get("RSITR_TEST_CACHE", Path.home() / ".cache" / "rsitr_hf")) / "test-tagger-v1"
    if not (cache / "tagger.pt").is_file():
        ewt = UD_ENGLISH_DIR
        train_small_tagger(ewt / "en_ewt-ud-test.conllu", ewt / "en_ewt-ud-dev.conllu", cache, max_steps=600)
    return cache / "tagger.pt"


def write_recipe(path: Path, tiny_clip_dir, synthetic_dir, output_dir, **training) -> Path:
    """A tiny MRS-Adapter recipe on the synthetic data (``training`` entries override the defaults)."""
    import yaml

    recipe = {
        "base_model": str(tiny_clip_dir),
        "output_dir": str(output_dir),
        "method": {"name": "mrs_adapter", "config": {"bottleneck_dim": 16, "shared_dim": 8}},
        "data": {"path": str(synthetic_dir), "validation_fraction": 0.2},
        "optimizer": {"lr": 1.0e-2},
        "schedule": {"name": "cosine"},
        "training": {"epochs": 2, "batch_size": 8, "eval_batch_size": 7, **training},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli_overrides(arguments: list[str]) -> dict:
    """``["--section.field", "value", ...]`` as ``rsitr-train``'s parser reads them: ``load_recipe``'s
    overrides."""
    from rsitr_hf.training.recipe import add_recipe_arguments, recipe_overrides
    from rsitr_hf.utils.cli import command_parser

    parser = command_parser("recipe options")
    destinations = add_recipe_arguments(parser)
    return recipe_overrides(parser.parse_args(arguments), destinations)


def run_script(arguments: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """``train_accelerate.py arguments`` in a new process (under ``launcher``, e.g. ``accelerate launch``)."""
    command = [*(launcher or [sys.executable]), str(ROOT / "train_accelerate.py"), *arguments]
    return subprocess.run(
        command, capture_output=True, text=True, env=subprocess_env(), timeout=HANG_TIMEOUT, cwd=ROOT
    )


def subprocess_env() -> dict:
    """This environment, with the repository root prepended to ``PYTHONPATH`` (kept, not replaced: the
    stack may itself come through ``PYTHONPATH``)."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1"}


def run_in_fresh_process(tmp_path: Path, source: str, *arguments) -> subprocess.CompletedProcess:
    """Run ``source`` as a script in a new Python process (from the repository root) with ``arguments``."""
    script = tmp_path / "fresh_process.py"
    script.write_text(source)
    command = [sys.executable, str(script), *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=HANG_TIMEOUT)


def tiny_inputs(seed: int = 0, batch: int = 3):
    """Random ``(pixel_values, input_ids)`` for the ``tiny_clip_dir`` model: 32-px images, 7 tokens."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, 32, 32, generator=generator)
    input_ids = torch.randint(0, 700, (batch, 7), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 742, 743  # bos ... eos
    return pixel_values, input_ids


def clip_embeddings(model, pixel_values, input_ids):
    """``(image, text)`` projected embeddings of a CLIP-like model, without gradients."""
    import torch

    with torch.no_grad():
        return (
            model.get_image_features(pixel_values=pixel_values).pooler_output,
            model.get_text_features(input_ids=input_ids).pooler_output,
        )


@pytest.fixture
def base(tiny_clip_dir):
    """A fresh tiny ``CLIPModel`` (from ``tiny_clip_dir``) for a test to adapt."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(tiny_clip_dir)


def randomise_parameters(model, marker: str, seed: int = 0, skip: str | None = None) -> None:
    """Random (0.1-scaled normal) values for the parameters whose name contains ``marker`` (and not ``skip``):
    fresh adapters start as the identity, which tests of what they compute must leave."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if marker in name and (skip is None or skip not in name):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


RELOAD = """
import sys, torch, rsitr_hf
from peft import PeftModel, get_peft_model_state_dict
from transformers import CLIPModel
base = CLIPModel.from_pretrained(sys.argv[1])
model = PeftModel.from_pretrained(base, sys.argv[2], adapter_name=sys.argv[5]).eval()
data = torch.load(sys.argv[3])
with torch.no_grad():
    out = model(**data, return_dict=True)
adapter = get_peft_model_state_dict(model, adapter_name=sys.argv[5])
torch.save({"image": out.image_embeds, "text": out.text_embeds, "adapter": adapter}, sys.argv[4])
"""


def reloaded_in_fresh_process(
    tmp_path: Path, model, base_dir: Path, inputs: dict, adapter_name: str = "default"
):
    """Save ``model``'s adapter to ``tmp_path / "adapter"``, load it onto ``base_dir`` as ``adapter_name``
    in a new Python process and run ``model(**inputs)`` there; returns ``(expected, reloaded)``: this
    process's output and ``{"image", "text", "adapter"}`` (the embeddings and the adapter's state dict)
    from the new one."""
    import torch

    with torch.no_grad():
        expected = model(**inputs, return_dict=True)
    model.save_pretrained(tmp_path / "adapter")
    torch.save(inputs, tmp_path / "inputs.pt")
    result = run_in_fresh_process(
        tmp_path,
        RELOAD,
        base_dir,
        tmp_path / "adapter",
        tmp_path / "inputs.pt",
        tmp_path / "out.pt",
        adapter_name,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return expected, torch.load(tmp_path / "out.pt")


@pytest.fixture
def browser():
    """Debian's headless chromium through selenium (``tests/browser.py``); the test is skipped, with the
    reason, where it is absent."""
    from browser import BrowserUnavailable, headless_chromium

    try:
        driver = headless_chromium()
    except BrowserUnavailable as reason:
        pytest.skip(str(reason))
    yield driver
    driver.quit()


def interrupted_embedding(model, after_batches: int):
    """Make ``model.embed_images`` (a ``RetrievalModel``'s) raise ``KeyboardInterrupt`` on batch
    ``after_batches + 1``, as a kill would; returns the function that restores it."""
    original, calls = type(model).embed_images, []

    def embed(images):
        calls.append(len(images))
        if len(calls) == after_batches + 1:
            raise KeyboardInterrupt
        return original(model, images)

    model.embed_images = embed
    return lambda: setattr(model, "embed_images", lambda images: original(model, images))


def assert_one_line_error(capsys, status: int, *expected: str) -> str:
    """Exit status 2, the error on the last stderr line (progress bars may come before it), no traceback."""
    err = capsys.readouterr().err
    assert status == 2, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert ": error: " in last
    for text in expected:
        assert text in last, last
    return last


def index_files(index) -> list[str]:
    """The image (or scene) of each live row of a search index, in row-id order."""
    return index.table()[index.manifest.item_column].to_pylist()


def index_windows(index) -> list[tuple[int, int, int, int]]:
    """The pixel window of each live row of a scene index, in row-id order."""
    table = index.table()
    columns = [table[column].to_pylist() for column in ("col_off", "row_off", "width", "height")]
    return list(zip(*columns, strict=True))


def index_embeddings(index):
    """``(N, D)`` float32 tensor: the live embeddings of a search index, in row-id order."""
    import torch

    return torch.from_numpy(index.matrix())


def write_format_2(index_dir: Path, index) -> None:
    """Replace the search index in ``index_dir`` (``index``, loaded from it) by the same rows as rsitr_hf
    0.2 saved them: every file (and a scene index's windows and scenes) in ``index.json``, one safetensors
    file of embeddings."""
    import json
    from dataclasses import asdict

    from safetensors.torch import save_file

    save_file({"image_embeds": index_embeddings(index)}, index_dir / "embeddings-0123456789ab.safetensors")
    metadata = {
        "format_version": 2,
        "root": index.root,
        "files": index_files(index),
        "embeddings_file": "embeddings-0123456789ab.safetensors",
        "model": json.loads((index_dir / "manifest.json").read_text())["model"],
    }
    if index.tiling is not None:
        metadata["scene_tiles"] = {
            "tiling": index.tiling.to_dict(),
            "scenes": {  # 0.2 kept no fingerprint of the scenes' files
                name: {key: value for key, value in asdict(info).items() if key != "fingerprint"}
                for name, info in index.scenes.items()
            },
            "windows": [list(window) for window in index_windows(index)],
            "pending": [],
        }
    for stored in [index_dir / "manifest.json", *index_dir.glob("shard-*")]:
        shutil.rmtree(stored) if stored.is_dir() else stored.unlink()
    (index_dir / "index.json").write_text(json.dumps(metadata))


def copy_test_images(synthetic_dir: Path, folder: Path, count: int) -> Path:
    """``folder`` holding the first ``count`` test images of the synthetic set (an image folder to index)."""
    folder.mkdir(parents=True)
    for path in sorted((synthetic_dir / "synthrs_images").glob("test_*.tif"))[:count]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def search_model(tiny_clip_dir):
    """The tiny CLIP as a search model (no adapter)."""
    from rsitr_hf.search import RetrievalModel

    return RetrievalModel(tiny_clip_dir)
