"""A method is its declaration: a fourth method declared in this file alone, with a loss of its own (with new
options) and text inputs of its own (a caption prefix turned into extra token ids), is found by every command
through the one documented mechanism, the ``rsitr_hf.methods`` entry points of an installed package (here a
``.dist-info`` folder this file writes, naming this file as the plugin module), and trains with
``accelerate launch train_accelerate.py``, is a choice of ``--method.name`` / ``--loss.name`` with its options
in ``--help``, is on the model card, is searchable by text with ``rsitr-search`` and runs in ``rsitr-petl``,
with no edit to ``rsitr_hf/``.

Its tuner is peft's (IA)^3; its loss, a symmetric InfoNCE with label smoothing and a fixed temperature.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import index_embeddings
from peft import IA3Config

from rsitr_hf import MethodSpec, register_method
from rsitr_hf.data.text_inputs import TextInputs, register_text_inputs
from rsitr_hf.objectives import pair_embeddings
from rsitr_hf.objectives.table import LossSpec, register_loss
from rsitr_hf.utils.config import FRACTION, POSITIVE, option


@dataclass
class SmoothedInfoNCEOptions:
    """The smoothed InfoNCE's options."""

    label_smoothing: float = option(0.1, "share of each target spread over the other items", valid=FRACTION)
    temperature: float = option(0.05, "fixed temperature of the logits", valid=POSITIVE)


def smoothed_infonce(model, batch: dict, pixel_values: torch.Tensor, options: SmoothedInfoNCEOptions):
    image, text = pair_embeddings(model, pixel_values, batch["text"])
    logits = image @ text.T / options.temperature
    targets = torch.arange(len(logits), device=logits.device)
    smoothing = options.label_smoothing
    return (F.cross_entropy(logits, targets, label_smoothing=smoothing)
            + F.cross_entropy(logits.T, targets, label_smoothing=smoothing)) / 2  # fmt: skip


SMOOTHED_INFONCE = register_loss(
    LossSpec(
        name="smoothed_infonce",
        summary="symmetric InfoNCE with label smoothing at a fixed temperature",
        compute=smoothed_infonce,
        options=SmoothedInfoNCEOptions,
    )
)


@dataclass
class PrefixOptions:
    """Which words go before every caption."""

    prefix: str = option("an aerial photo of", "words whose tokens go before every caption's")


@register_text_inputs
class PrefixedTokens(TextInputs):
    """CLIP's tokens of the caption, after the start token and the prefix's tokens."""

    name = "prefixed_tokens"
    summary = "CLIP's tokens of the caption after a fixed prefix's"
    Options = PrefixOptions

    def encode(self, captions):
        prefix = self.tokenizer(self.options.prefix, add_special_tokens=False)["input_ids"]
        rows = self.tokens([self.text_of(caption) for caption in captions])
        return {
            "input_ids": [[row[0], *(prefix + row[1:-1])[: self.max_length - 2], row[-1]] for row in rows]
        }


PREFIXED_IA3 = register_method(
    MethodSpec(
        name="prefixed_ia3",
        summary="peft's (IA)^3 scaling vectors, captions after a prefix",
        config_class=IA3Config,
        config_defaults={"target_modules": ["k_proj", "v_proj", "fc2"], "feedforward_modules": ["fc2"]},
        losses=("smoothed_infonce", "hmmc"),
        text_inputs="prefixed_tokens",
        hub_tags=("ia3",),
        card_text="(IA)^3: learned vectors scale the attention keys and values and the MLP's activations.",
    )
)
# (IA)^3 on the tiny CLIP of conftest: per block k and v (the tower's width) and fc2's input (4 x the width)
IA3_PARAMETERS = 2 * (6 * 32 + 6 * 48)
PREFIX = "a picture from above of"
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]


def installed_plugin(folder: Path) -> str:
    """A package's metadata naming this file in the ``rsitr_hf.methods`` entry points, as ``pip install``
    leaves it, in ``folder``; returns the ``PYTHONPATH`` on which it and this file are found."""
    info = folder / "rsitr_test_plugin-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rsitr-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[rsitr_hf.methods]\nprefixed_ia3 = {Path(__file__).stem}\n")
    return os.pathsep.join([str(folder), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> str:
    return installed_plugin(tmp_path_factory.mktemp("site"))


def run(command: list[str], python_path: str | None) -> subprocess.CompletedProcess:
    from conftest import HANG_TIMEOUT, ROOT, subprocess_env

    env = subprocess_env()
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([python_path, env["PYTHONPATH"]])
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=HANG_TIMEOUT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_dir, synthetic_dir, plugin_path) -> Path:
    """The method trained by ``accelerate launch train_accelerate.py`` in a process that finds it only
    through the entry point; its loss and text inputs with options of this recipe."""
    from conftest import ROOT, write_recipe

    folder = tmp_path_factory.mktemp("prefixed_ia3")
    recipe = write_recipe(folder / "recipe.yaml", tiny_clip_dir, synthetic_dir, folder / "out", max_steps=3)
    options = [
        "--method.name", "prefixed_ia3", "--method.config", "{}", "--loss.name", "smoothed_infonce",
        "--loss.label_smoothing", "0.2", "--text.prefix", PREFIX,
    ]  # fmt: skip
    result = run([*LAUNCH, str(ROOT / "train_accelerate.py"), "--config", str(recipe), *options], plugin_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "out"


def test_it_trains_with_accelerate_launch_through_its_entry_point(trained, tmp_path, tiny_clip_dir):
    from conftest import ROOT

    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["cost"]["trainable_parameters"] == IA3_PARAMETERS
    assert [e["step"] for e in metrics["evaluations"] if e["split"] == "validation"] == [0, 3]
    recipe = (trained / "recipe.yaml").read_text()
    assert "name: smoothed_infonce\n  label_smoothing: 0.2\n  temperature: 0.05" in recipe
    config = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3" and config["feedforward_modules"] == ["fc2"]
    record = json.loads((trained / "adapter" / "text_inputs.json").read_text())
    assert record == {"name": "prefixed_tokens", "options": {"prefix": PREFIX}}
    # without its package installed, no command knows it
    script = [sys.executable, str(ROOT / "train_accelerate.py"), "--config", str(trained / "recipe.yaml")]
    bare = run([*script, "--output_dir", str(tmp_path / "bare")], None)
    assert bare.returncode == 2 and "got 'prefixed_ia3'" in bare.stderr.strip().splitlines()[-1]


def test_its_loss_computes_what_it_declares(tiny_clip_dir):
    from conftest import tiny_inputs
    from peft import get_peft_model
    from transformers import CLIPModel

    from rsitr_hf.training import load_recipe

    recipe = load_recipe(None, {"method.name": "prefixed_ia3", "loss.temperature": 0.1})
    assert recipe.loss.name == "smoothed_infonce"  # the method's default
    assert recipe.loss.options == SmoothedInfoNCEOptions(label_smoothing=0.1, temperature=0.1)
    assert recipe.text.options == PrefixOptions()
    model = get_peft_model(CLIPModel.from_pretrained(tiny_clip_dir), PREFIXED_IA3.make_config())
    pixel_values, input_ids = tiny_inputs(batch=4)
    batch = {"text": {"input_ids": input_ids}, "image_ids": torch.arange(4)}
    loss = SMOOTHED_INFONCE.compute(model, batch, pixel_values, recipe.loss.options)
    with torch.no_grad():
        output = model(pixel_values=pixel_values, input_ids=input_ids)
    logits = output.image_embeds @ output.text_embeds.T / 0.1
    smoothed = (1 - 0.1) * torch.eye(4) + 0.1 / 4
    image_to_text = -(smoothed * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(smoothed * logits.T.log_softmax(1)).sum(1).mean()
    expected = (image_to_text + text_to_image) / 2
    torch.testing.assert_close(loss.detach(), expected)
    with pytest.raises(ValueError, match="unknown key loss.max_violation .*smoothed_infonce"):
        load_recipe(None, {"method.name": "prefixed_ia3", "loss.max_violation": True})


def test_its_name_loss_and_options_are_in_help(plugin_path):
    from conftest import ROOT

    result = run([sys.executable, str(ROOT / "train_accelerate.py"), "--help"], plugin_path)
    assert result.returncode == 0, result.stderr[-2000:]
    text = "".join(result.stdout.split())  # argparse wraps the help where it likes
    assert "prefixed_ia3(peft's(IA)^3scalingvectors,captionsafteraprefix)" in text
    assert "mrs_adapter(PE-RSITR'sMRS-Adapter)" in text  # beside the methods rsitr_hf declares itself
    assert "smoothed_infonce(symmetricInfoNCEwithlabelsmoothingatafixedtemperature)" in text
    assert "--loss.label_smoothingFLOATsmoothed_infonce:shareofeachtarget" in text
    assert "--text.prefixSTRprefixed_tokens:wordswhosetokensgobeforeeverycaption's" in text


def test_its_model_card_has_its_tag_and_text():
    from rsitr_hf.training import load_recipe, model_card

    recipe = load_recipe(None, {"method.name": "prefixed_ia3", "base_model": "openai/clip-vit-base-patch32"})
    card = str(model_card(recipe.to_dict(), {"rsicd": {"mR": 12.5}}, "me/ia3-rsicd"))
    assert "- ia3" in card and "library_name: peft" in card and PREFIXED_IA3.card_text in card
    assert 'PeftModel.from_pretrained(base, "me/ia3-rsicd")' in card
    assert "name: smoothed_infonce" in card and "prefix: an aerial photo of" in card


def test_it_is_searchable_by_text_with_its_own_text_inputs(
    trained, tiny_clip_dir, synthetic_dir, plugin_path, tmp_path
):
    from transformers import CLIPTokenizer

    from rsitr_hf.evaluation.inference import RetrievalModel

    adapter, query = trained / "adapter", "many planes parked at the airport"
    images = synthetic_dir / "synthrs_images"
    search, common = [sys.executable, "-m", "rsitr_hf.search"], ["--index", str(tmp_path / "index")]
    model_options = ["--model", str(tiny_clip_dir), "--adapter", str(adapter)]
    assert run([*search, "index", str(images), *common, *model_options], plugin_path).returncode == 0
    queried = run([*search, "query", *common, "--text", query, "--json", "-"], plugin_path)
    assert queried.returncode == 0, queried.stderr[-2000:]
    hits = json.loads(queried.stdout)[0]["hits"]

    model = RetrievalModel(tiny_clip_dir, adapter, device="cpu")
    assert model.method is PREFIXED_IA3 and model.text_inputs.options.prefix == PREFIX
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip_dir)
    prefixed = tokenizer([f"{PREFIX} {query}"], return_tensors="pt")
    with torch.no_grad():
        text = F.normalize(model.model.get_text_features(**prefixed).pooler_output, dim=-1)
    torch.testing.assert_close(model.embed_texts([query]), text)  # the prefix's tokens, then the caption's
    from rsitr_hf.search import ImageIndex

    scores = (text @ index_embeddings(ImageIndex.load(tmp_path / "index")).T)[0]
    assert [hit["score"] for hit in hits] == pytest.approx(scores.topk(len(hits)).values.tolist(), abs=1e-5)


def test_it_runs_in_rsitr_petl_beside_the_zero_shot_base(
    tmp_path, tiny_clip_dir, synthetic_dir, plugin_path, monkeypatch
):
    import yaml
    from conftest import write_recipe

    from rsitr_hf.tools.petl_harness import run_benchmark

    monkeypatch.setenv("PYTHONPATH", plugin_path)  # the runs' processes find it as every command does
    shared = write_recipe(
        tmp_path / "shared.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "unused", max_steps=2
    )
    benchmark = {
        "recipe": str(shared),
        "seeds": [0, 1],
        "output_dir": str(tmp_path / "petl"),
        "methods": {"zero_shot": {"method": {"name": "zero_shot"}},
                    "prefixed_ia3": {"method": {"name": "prefixed_ia3"}, "text": {"prefix": PREFIX}}},
    }  # fmt: skip
    (tmp_path / "benchmark.yaml").write_text(yaml.safe_dump(benchmark))
    rows = {row.method: row for row in run_benchmark(tmp_path / "benchmark.yaml")}
    assert rows["prefixed_ia3"].trainable_parameters == IA3_PARAMETERS and rows["prefixed_ia3"].seeds == [
        0,
        1,
    ]
    assert rows["zero_shot"].trainable_parameters == 0 and rows["zero_shot"].seeds == [0]
    assert "| prefixed_ia3 | 960 |" in (tmp_path / "petl" / "results.md").read_text()
    run_recipe = yaml.safe_load((tmp_path / "petl" / "prefixed_ia3" / "seed_0" / "recipe.yaml").read_text())
    assert run_recipe["loss"]["name"] == "smoothed_infonce" and run_recipe["text"] == {"prefix": PREFIX}


def test_a_name_already_taken_cannot_be_declared_again():
    register_method(PREFIXED_IA3)  # the same declaration again: nothing changes
    with pytest.raises(ValueError, match="a different method is already registered as 'prefixed_ia3'"):
        register_method(MethodSpec(name="prefixed_ia3", summary="something else"))
    with pytest.raises(ValueError, match="a different loss is already registered as 'smoothed_infonce'"):
        register_loss(LossSpec(name="smoothed_infonce", summary="other", compute=smoothed_infonce))
