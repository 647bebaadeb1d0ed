import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TWO_PROCESS_LAUNCH, cli_overrides, run_script, write_recipe
from peft import PeftModel
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor

from rsitr_hf.data import load_rsitr
from rsitr_hf.data.pos import normalise_caption
from rsitr_hf.evaluation import evaluate_retrieval
from rsitr_hf.training import main, train
from rsitr_hf.training.hub import HubPushError, hub_base_id, model_card, push_adapter
from rsitr_hf.training.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_clip_dir, synthetic_dir):
    """One tiny end-to-end run through train_accelerate.py, shared by the tests that inspect its outputs."""
    root = tmp_path_factory.mktemp("run")
    recipe = write_recipe(root / "recipe.yaml", tiny_clip_dir, synthetic_dir, root / "out")
    result = run_script(["--config", str(recipe), "--training.checkpoint_every_steps", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "out"


def test_unknown_and_mistyped_keys_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  bach_size: 8\n")
    with pytest.raises(
        RecipeError, match=r"bad.yaml: unknown key training.bach_size \(known keys of training:"
    ):
        load_recipe(bad)
    bad.write_text("method:\n  name: prefix_tuning\n")
    with pytest.raises(
        RecipeError,
        match=r"method.name: expected one of \['mrs_adapter', 'pos_prompt', 'harma', 'bottleneck_adapter', "
        r"'lora', 'linear_probe', 'full', 'zero_shot'.*\], got 'prefix_tuning'",
    ):
        load_recipe(bad)
    bad.write_text("training:\n  epochs: three\n")
    with pytest.raises(RecipeError, match=r"training.epochs: expected an integer, got 'three'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match=r"unknown key learning_rate"):
        load_recipe(None, {"learning_rate": 1})


def test_overrides_reach_every_field_and_aliases_work():
    recipe = load_recipe(
        ROOT / "hub_configs" / "pe_rsitr_rsitmd.yaml",
        {
            "training.epochs": 3,
            "optimizer.lr": 1e-3,
            "method.config": {"bottleneck_dim": 32},
            "hub.push_to_hub": True,
            "hub.model_id": "me/adapter",
            "data.path": "elsewhere",
        },
    )
    assert recipe.training.epochs == 3 and recipe.optimizer.lr == 1e-3
    assert recipe.method.config == {"bottleneck_dim": 32}
    assert recipe.hub.push_to_hub is True and recipe.hub.model_id == "me/adapter"
    assert recipe.data.path == "elsewhere" and recipe.training.batch_size == 16


def test_paper_recipes_match_the_specification():
    for name in ("rsicd", "rsitmd", "ucm"):
        recipe = load_recipe(ROOT / "hub_configs" / f"pe_rsitr_{name}.yaml")
        assert recipe.base_model == "openai/clip-vit-base-patch32"
        assert recipe.method.name == "mrs_adapter" and recipe.loss.options.margin == 0.2
        assert (recipe.optimizer.name, recipe.optimizer.lr, recipe.optimizer.weight_decay) == (
            "adam",
            2e-4,
            0.0,
        )
        assert (recipe.schedule.name, recipe.schedule.step_epochs, recipe.schedule.gamma) == ("step", 20, 0.7)
        assert (recipe.training.epochs, recipe.training.batch_size) == (30, 16)


def test_cli_reports_recipe_errors_with_exit_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hub:\n  repo: x\n")
    assert main(["--config", str(bad)]) == 2
    assert "unknown key hub.repo" in capsys.readouterr().err
    assert main(["--push_to_hub"]) == 2
    assert "--push_to_hub needs --hub_model_id" in capsys.readouterr().err


def test_end_to_end_outputs(trained_run, tiny_clip_dir, synthetic_dir):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    validations = [e for e in metrics["evaluations"] if e["split"] == "validation"]
    assert [e["step"] for e in validations] == [
        0,
        15,
        30,
    ]  # start, then each epoch (24 images x 5 captions / 8)
    assert [e["epoch"] for e in validations] == [0, 1, 2]
    assert metrics["best"]["validation_mR"] == max(e["mR"] for e in validations)
    assert len(metrics["train_loss"]) == 30
    for name in ("training_curve.png", "recall.png", "retrieval_examples.png", "recipe.yaml"):
        assert (trained_run / name).stat().st_size > 0
    adapter = trained_run / "adapter"
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "processor_config.json",
        "tokenizer.json",
    } <= {p.name for p in adapter.iterdir()}
    # the saved adapter is the selected one and reproduces the reported test metrics
    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), adapter)
    test = load_rsitr(synthetic_dir)["test"]
    assert evaluate_retrieval(model, test, CLIPProcessor.from_pretrained(adapter)) == pytest.approx(
        metrics["test"]
    )
    # the test split under the three tie protocols, from one encoding; the recipe's is the reported one
    ties = metrics["test_ties"]
    assert ties["used"] == "pessimistic" and ties["pessimistic"] == metrics["test"]
    for key in ("i2t_r1", "t2i_r1", "mR"):
        assert ties["pessimistic"][key] <= ties["reference"][key] <= ties["optimistic"][key]
    reference = evaluate_retrieval(model, test, CLIPProcessor.from_pretrained(adapter), ties="reference")
    assert reference == pytest.approx(ties["reference"])


def test_checkpoints_hold_the_adapter_never_the_backbone(trained_run):
    checkpoints = sorted((trained_run / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step_00000024", "step_00000028"]  # every 4 steps, keep 2
    for checkpoint in checkpoints:
        files = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
        assert (
            "adapter/adapter_model.safetensors" in files and "best_adapter/adapter_model.safetensors" in files
        )
        assert not any(name.startswith(("model", "pytorch_model")) for name in files)
        assert sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file()) < 2_000_000


def test_resumed_run_ends_with_the_same_adapter(tmp_path, tiny_clip_dir, synthetic_dir):
    uninterrupted = tmp_path / "uninterrupted"
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        tiny_clip_dir,
        synthetic_dir,
        uninterrupted,
        checkpoint_every_steps=2,
        checkpoints_total_limit=None,
        eval_every_steps=2,
    )
    full = train(load_recipe(recipe, {"data.augment": True}))  # random crops and flips too
    # the interrupted run: only what existed at step 4 of 30 survives
    interrupted = tmp_path / "interrupted"
    shutil.copytree(
        uninterrupted / "checkpoints" / "step_00000004", interrupted / "checkpoints" / "step_00000004"
    )
    resumed = train(
        load_recipe(recipe, {"data.augment": True, "output_dir": str(interrupted)}),
        resume_from_checkpoint="latest",
    )
    last = "checkpoints/step_00000030/adapter/adapter_model.safetensors"
    first, second = load_file(uninterrupted / last), load_file(interrupted / last)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-5, atol=1e-6)
    assert resumed.test_metrics == pytest.approx(full.test_metrics)
    assert resumed.best_step == full.best_step
    full_evaluations = json.loads((uninterrupted / "metrics.json").read_text())["evaluations"]
    resumed_evaluations = json.loads((interrupted / "metrics.json").read_text())["evaluations"]
    assert [(e["step"], e["split"]) for e in resumed_evaluations] == [
        (e["step"], e["split"]) for e in full_evaluations
    ]
    for resumed_evaluation, full_evaluation in zip(resumed_evaluations, full_evaluations, strict=True):
        assert resumed_evaluation["mR"] == pytest.approx(full_evaluation["mR"])


def test_two_processes_evaluate_exactly_like_one(tmp_path, tiny_clip_dir, synthetic_dir):
    single = write_recipe(
        tmp_path / "single.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "single", epochs=0
    )
    assert run_script(["--config", str(single)]).returncode == 0
    double = write_recipe(
        tmp_path / "double.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "double", epochs=1
    )
    result = run_script(["--config", str(double)], [sys.executable, *TWO_PROCESS_LAUNCH])
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())["evaluations"]
    two = json.loads((tmp_path / "double" / "metrics.json").read_text())
    assert two["evaluations"][0] == one[0]  # step-0 validation of the same (identity) adapter
    assert (
        len(two["train_loss"]) == 8
    )  # 120 captions, 8 per process, 2 processes: 15 batches -> 8 per process
    assert (tmp_path / "double" / "adapter" / "adapter_model.safetensors").is_file()


class FolderHubApi:
    """Stands in for huggingface_hub.HfApi: a repo is a folder under ``root``."""

    def __init__(self, root: Path):
        self.root = root

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return f"file://{self.root / repo_id}"

    def upload_folder(self, repo_id, repo_type, folder_path, commit_message):
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)


def test_push_with_an_injected_api_then_load(trained_run, tiny_clip_dir, synthetic_dir, tmp_path):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    recipe = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    url = push_adapter(
        trained_run / "adapter",
        "someone/mrs-synthetic",
        recipe,
        {"synthrs": metrics["test"]},
        api=FolderHubApi(tmp_path / "hub"),
    )
    repo = tmp_path / "hub" / "someone" / "mrs-synthetic"
    assert url.endswith("someone/mrs-synthetic")
    card = (repo / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and "base_model" not in front  # a local folder is no Hub id
    assert "a local base model" in card and 'from_pretrained("path/to/the/base/model")' in card
    assert {"peft", "remote-sensing", "image-text-retrieval", "mrs-adapter"} <= set(front["tags"])
    assert front["datasets"] == ["synthrs"]
    results = front["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in results}["mR"] == round(metrics["test"]["mR"], 2)
    assert "import rsitr_hf" in card and "PeftModel.from_pretrained" in card
    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), repo)
    test = load_rsitr(synthetic_dir)["test"]
    assert evaluate_retrieval(model, test, CLIPProcessor.from_pretrained(repo)) == pytest.approx(
        metrics["test"]
    )


def test_failed_push_is_a_clear_error_and_keeps_the_outputs(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out", epochs=0)
    result = run_script(["--config", str(recipe), "--push_to_hub", "--hub_model_id", "someone/offline"])
    assert result.returncode == 1
    assert "could not push" in result.stderr and "saved locally" in result.stderr
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (tmp_path / "out" / "metrics.json").is_file()

    class Refusing(FolderHubApi):
        def upload_folder(self, **kwargs):
            raise ConnectionError("network unreachable")

    before = sorted(p.name for p in adapter.iterdir())
    with pytest.raises(HubPushError, match="network unreachable"):
        push_adapter(
            adapter,
            "someone/x",
            {"base_model": "b", "method": {"name": "lora"}},
            {"d": {}},
            api=Refusing(tmp_path / "hub"),
        )
    assert sorted(p.name for p in adapter.iterdir()) == before


def test_without_a_validation_split_the_latest_adapter_is_kept(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out", epochs=1)
    result = train(load_recipe(recipe, {"data.validation_fraction": 0}))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert result.best_step == 19 and result.best_validation_mR is None  # 30 images x 5 captions / 8
    assert metrics["best"] == {"step": 19, "validation_mR": None}
    assert [e["step"] for e in metrics["evaluations"]] == [0, 19, 19]


def test_bf16_with_accumulation_and_clipping(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out", epochs=1,
        mixed_precision="bf16", gradient_accumulation_steps=2, max_grad_norm=1.0,
    )  # fmt: skip
    result = run_script(["--config", str(recipe)])  # a new process: Accelerate's precision is per process
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(metrics["train_loss"]) == 8  # 15 micro-batches, 2 per optimiser step
    assert all(math.isfinite(point["loss"]) for point in metrics["train_loss"])
    checkpoint = tmp_path / "out" / "checkpoints" / "step_00000008" / "adapter" / "adapter_model.safetensors"
    last = load_file(checkpoint)
    assert all(tensor.dtype == torch.float32 for tensor in last.values())  # the adapter stays fp32
    assert last["base_model.mrs_adapter.shared_up.weight"].abs().sum() > 0  # optimiser steps happened


def posapl_arguments(
    tiny_clip_dir, synthetic_dir, tagger, output_dir, cache, pos_mode="sentence"
) -> list[str]:
    config = f"{{adapter_dim: 16, adapter_heads: 2, fusion_layers: [1, 1, 2, 2], pos_mode: {pos_mode}}}"
    return ["--base_model", str(tiny_clip_dir), "--data.path", str(synthetic_dir),
            "--text.pos_model", str(tagger), "--text.pos_cache", str(cache),
            "--data.empty_captions", "error", "--data.augment", "false",
            "--method.config", config, "--training.epochs", "1", "--training.batch_size", "8",
            "--training.eval_batch_size", "7", "--output_dir", str(output_dir)]  # fmt: skip


def test_posapl_recipe_runs_through_train_accelerate(
    tmp_path, tiny_clip_dir, synthetic_dir, stanza_tagger_path
):
    arguments = posapl_arguments(
        tiny_clip_dir, synthetic_dir, stanza_tagger_path, tmp_path / "out", tmp_path / "pos"
    )
    result = run_script(["--config", str(ROOT / "hub_configs" / "posapl_rsitmd.yaml"), *arguments])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [e["step"] for e in metrics["evaluations"] if e["split"] == "validation"] == [0, 15]
    assert all(math.isfinite(point["loss"]) for point in metrics["train_loss"])
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "POS_PROMPT (import rsitr_hf first)" and config["fusion"] == "cascade"


def test_posapl_tags_each_caption_once_and_its_adapter_records_the_tagger(
    tmp_path, tiny_clip_dir, synthetic_dir, stanza_tagger_path, monkeypatch
):
    import rsitr_hf.data.pos_inputs
    from rsitr_hf.evaluation import score_tests
    from rsitr_hf.evaluation.inference import RetrievalModel

    cache = tmp_path / "pos"

    def run(output: str):
        arguments = posapl_arguments(
            tiny_clip_dir, synthetic_dir, stanza_tagger_path, tmp_path / output, cache, pos_mode="aligned"
        )
        return train(load_recipe(ROOT / "hub_configs" / "posapl_rsicd.yaml", cli_overrides(arguments)))

    first = run("a")
    (folder,) = cache.iterdir()  # one tagger, one folder of tags
    tagged = (folder / "tags.jsonl").read_text().splitlines()
    splits = load_rsitr(synthetic_dir, validation_fraction=0.2)
    captions = {normalise_caption(c) for split in splits.values() for row in split["captions"] for c in row}
    assert sorted(json.loads(line)["text"] for line in tagged) == sorted(captions)  # each once

    def no_tagger(*arguments, **options):
        raise AssertionError("a second run tagged captions again")

    monkeypatch.setattr(rsitr_hf.data.pos_inputs, "StanzaTagger", no_tagger)
    run("b")  # every caption's tags come from the cache
    assert (folder / "tags.jsonl").read_text().splitlines() == tagged
    monkeypatch.undo()

    record = json.loads((tmp_path / "a" / "adapter" / "text_inputs.json").read_text())
    assert record["name"] == "pos_tags"
    assert record["options"]["pos_model"] == str(stanza_tagger_path.resolve())
    # the saved adapter, loaded as every command loads one, reproduces the reported test metrics
    model = RetrievalModel(tiny_clip_dir, tmp_path / "a" / "adapter", device="cpu")
    test = {"synthrs": (splits["test"], None)}
    tested = score_tests(
        model.model, test, ["synthrs"], model.processor, "pessimistic", text_inputs=model.text_inputs,
        batch_size=7,
    )  # fmt: skip
    assert tested.metrics == pytest.approx(first.test_metrics)


def test_posapl_without_a_pos_model_is_a_clear_error(tmp_path, tiny_clip_dir, synthetic_dir, capsys):
    missing = tmp_path / "no-tagger.pt"
    arguments = posapl_arguments(tiny_clip_dir, synthetic_dir, missing, tmp_path / "out", tmp_path / "pos")
    assert main(["--config", str(ROOT / "hub_configs" / "posapl_rsitmd.yaml"), *arguments]) == 2
    error = capsys.readouterr().err
    assert str(missing) in error and "stanza.download('en', processors='tokenize,pos')" in error


def test_the_card_names_the_base_by_its_hub_id_when_it_is_known(tmp_path, tiny_clip_dir):
    snapshot = tmp_path / "hub" / "models--openai--clip-vit-base-patch32" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    saved = tmp_path / "saved"
    shutil.copytree(tiny_clip_dir, saved)
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "_name_or_path": "laion/some-clip"}))
    assert hub_base_id("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    assert hub_base_id(str(snapshot)) == "openai/clip-vit-base-patch32"
    assert hub_base_id(str(saved)) == "laion/some-clip"
    assert hub_base_id(str(tiny_clip_dir)) is None
    recipe = {"base_model": str(snapshot), "method": {"name": "mrs_adapter"}}
    card = str(model_card(recipe, {"rsicd": {"mR": 12.345}}, "me/adapter"))
    assert yaml.safe_load(card.split("---")[1])["base_model"] == "openai/clip-vit-base-patch32"
    assert 'CLIPModel.from_pretrained("openai/clip-vit-base-patch32")' in card
    assert f'from_pretrained("{snapshot}")' not in card  # the recipe section still records the path used


def test_a_base_model_that_cannot_be_had_is_one_line_with_what_to_do(tmp_path, synthetic_dir, capsys):
    missing, given = tmp_path / "outputs" / "demo" / "base", ["--output_dir", str(tmp_path)]
    given += ["--data.path", str(synthetic_dir)]
    assert main(["--base_model", str(missing), *given]) == 2
    error = capsys.readouterr().err
    assert f"there is no folder {missing} and it is not a Hub id" in error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert main(["--base_model", "someone/clip-never-downloaded", *given]) == 2
    assert "not in the local Hub cache, and HF_HUB_OFFLINE is set" in capsys.readouterr().err


def test_the_demo_recipe_runs_through_the_entry_point(tmp_path, tiny_clip_dir, synthetic_dir):
    """``accelerate launch train_accelerate.py --config hub_configs/demo.yaml`` on a task laid out as
    ``rsitr-demo`` prepares it (copied here, to keep the test short), its folders given as the demo gives
    them: ``--base_model`` and ``--data.path``."""
    task = tmp_path / "demo"
    shutil.copytree(tiny_clip_dir, task / "base")
    target = task / "data" / "target_precomp"
    shutil.copytree(synthetic_dir, target)
    (target / "synthrs_images").rename(target / "target_images")
    arguments = ["--config", str(ROOT / "hub_configs" / "demo.yaml"), "--base_model", str(task / "base"),
                 "--data.path", str(target), "--output_dir", str(task / "run"), "--training.max_steps", "2",
                 "--method.config", "{bottleneck_dim: 8, shared_dim: 4}"]  # fmt: skip
    launched = run_script(
        arguments, [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    recipe = yaml.safe_load((task / "run" / "recipe.yaml").read_text())
    assert recipe["base_model"] == str(task / "base")
    assert recipe["data"]["path"] == str(target)
    assert (task / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_the_method_table_gives_the_loss_and_checks_the_method_config():
    assert load_recipe(None, {"method.name": "pos_prompt"}).loss.name == "posapl"  # its default loss
    assert load_recipe(None, {"method.name": "lora"}).loss.name == "hmmc"
    with pytest.raises(
        RecipeError, match=r"loss.name: pos_prompt \(POSAPL's .*\) trains with posapl, not hmmc"
    ):
        load_recipe(None, {"method.name": "pos_prompt", "loss.name": "hmmc"})
    with pytest.raises(RecipeError, match=r"method.config: .*unexpected keyword argument 'bottleneck'"):
        load_recipe(None, {"method.config": {"bottleneck": 8}})  # at load time, before anything runs
    with pytest.raises(RecipeError, match="method.config: full takes no options"):
        load_recipe(None, {"method.name": "full", "method.config": {"r": 8}})


def test_the_card_of_a_whole_model_loads_it_with_transformers():
    recipe = load_recipe(None, {"method.name": "full", "base_model": "openai/clip-vit-base-patch32"})
    card = str(model_card(recipe.to_dict(), {"rsitmd": {"mR": 30.0}}, "me/clip-rsitmd"))
    assert "library_name: transformers" in card and "- full-fine-tuning" in card and "- peft" not in card
    assert 'CLIPModel.from_pretrained("me/clip-rsitmd")' in card and "PeftModel" not in card


def test_validating_more_often_leaves_the_training_as_it_is(tmp_path, tiny_clip_dir, synthetic_dir):
    """Evaluation draws nothing from the training's random stream (dropout, token dropout): a run that
    validates every step trains exactly as one that validates at the end of the epoch."""
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "a", max_steps=4)
    once = train(load_recipe(recipe))
    often = train(load_recipe(recipe, {"output_dir": str(tmp_path / "b"), "training.eval_every_steps": 1}))
    once_metrics, often_metrics = (
        json.loads((r.output_dir / "metrics.json").read_text()) for r in (once, often)
    )
    assert len(often_metrics["evaluations"]) > len(once_metrics["evaluations"])
    assert often_metrics["train_loss"] == once_metrics["train_loss"]
