"""How a run is executed: precision from the launcher or the recipe, torch.compile, data workers, the image
cache and max_steps. Runs that need their own Accelerate state (precision, compilation) use new processes."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_overrides, run_script, write_recipe
from peft import PeftModel
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor

from rsitr_hf.data import load_rsitr
from rsitr_hf.demo.synthetic import write_seed_layout
from rsitr_hf.evaluation import evaluate_retrieval
from rsitr_hf.training import resolve_num_workers, train
from rsitr_hf.training.recipe import RecipeError, load_recipe
from rsitr_hf.utils.config import read_yaml

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]


def metrics_of(output_dir: Path) -> dict:
    return json.loads((output_dir / "metrics.json").read_text())


def test_mixed_precision_comes_from_the_launcher_unless_the_recipe_sets_it(
    tmp_path, tiny_clip_dir, synthetic_dir
):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "flag", max_steps=2
    )
    launched = run_script(
        ["--config", str(recipe)], [*LAUNCH, "--mixed_precision", "bf16", "--dynamo_backend", "no"]
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    cost = metrics_of(tmp_path / "flag")["cost"]
    assert (cost["mixed_precision"], cost["mixed_precision_from"]) == ("bf16", "accelerate launch/config")
    assert "mixed precision bf16 (accelerate launch/config)" in launched.stderr  # logged
    assert len(metrics_of(tmp_path / "flag")["train_loss"]) == 2  # max_steps

    config = tmp_path / "accelerate.yaml"  # what `accelerate config` writes
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: bf16\n"
        "num_processes: 1\nnum_machines: 1\nuse_cpu: true\ndynamo_config: {}\n"
    )
    from_file = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    launched = run_script(["--config", str(recipe), "--output_dir", str(tmp_path / "file")], from_file)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert metrics_of(tmp_path / "file")["cost"]["mixed_precision"] == "bf16"

    overridden = run_script(
        [
            "--config",
            str(recipe),
            "--output_dir",
            str(tmp_path / "recipe"),
            "--training.mixed_precision",
            "no",
        ],
        from_file,
    )
    assert overridden.returncode == 0, overridden.stderr[-3000:]
    cost = metrics_of(tmp_path / "recipe")["cost"]
    assert (cost["mixed_precision"], cost["mixed_precision_from"]) == ("no", "recipe")


def compile_available() -> bool:
    try:
        return bool(torch.compile(lambda x: x + 1)(torch.ones(2)).eq(2).all())
    except Exception:  # no C++ compiler, unsupported Python ...
        return False


@pytest.mark.skipif(not compile_available(), reason="torch.compile (inductor) does not work on this machine")
def test_compiled_training_equals_eager_and_resumes_exactly(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "eager",
        max_steps=4, checkpoint_every_steps=2, checkpoints_total_limit=None, eval_every_steps=2,
    )  # fmt: skip
    no_dropout = [
        "--method.config", "{bottleneck_dim: 16, shared_dim: 8, adapter_dropout: 0.0}",
        "--loss.token_dropout", "0.0",
    ]  # fmt: skip
    eager = run_script(["--config", str(recipe), *no_dropout, "--training.compile", "false"])
    assert eager.returncode == 0, eager.stderr[-3000:]
    compiled_dir = tmp_path / "compiled"
    compiled = run_script(
        [
            "--config",
            str(recipe),
            *no_dropout,
            "--training.compile",
            "true",
            "--output_dir",
            str(compiled_dir),
        ]
    )
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert metrics_of(compiled_dir)["cost"]["compiled"] is True
    assert metrics_of(tmp_path / "eager")["cost"]["compiled"] is False
    eager_losses = [point["loss"] for point in metrics_of(tmp_path / "eager")["train_loss"]]
    compiled_losses = [point["loss"] for point in metrics_of(compiled_dir)["train_loss"]]
    assert len(compiled_losses) == 4
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(
        compiled_dir / "checkpoints" / "step_00000002", resumed_dir / "checkpoints" / "step_00000002"
    )
    resumed = run_script(
        ["--config", str(recipe), *no_dropout, "--training.compile", "true", "--output_dir", str(resumed_dir),
         "--resume_from_checkpoint", "latest"]
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = "checkpoints/step_00000004/adapter/adapter_model.safetensors"
    first, second = load_file(compiled_dir / last), load_file(resumed_dir / last)
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-6, atol=1e-7)
    assert metrics_of(resumed_dir)["train_loss"] == metrics_of(compiled_dir)["train_loss"]


def test_workers_and_the_uncached_path_train_exactly_like_the_cached_main_process(
    tmp_path, tiny_clip_dir, synthetic_dir
):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "a", epochs=1)
    augmented = {"data.augment": True}
    cached = train(load_recipe(recipe, {**augmented, "training.num_workers": 0}))
    decoded = train(
        load_recipe(
            recipe,
            {
                **augmented,
                "training.num_workers": 2,
                "data.cache_images": False,
                "output_dir": str(tmp_path / "b"),
            },
        )
    )
    assert (cached.cost["num_workers"], decoded.cost["num_workers"]) == (0, 2)
    assert (cached.cost["image_cache"], decoded.cost["image_cache"]) == (True, False)
    assert decoded.test_metrics == cached.test_metrics
    last = "checkpoints/step_00000015/adapter/adapter_model.safetensors"
    first, second = load_file(tmp_path / "a" / last), load_file(tmp_path / "b" / last)
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=0)


def test_num_workers_auto_and_its_validation(tmp_path):
    assert resolve_num_workers("auto", torch.device("cpu"), 1) == 0
    assert 1 <= resolve_num_workers("auto", torch.device("cuda"), 1) <= 8
    assert resolve_num_workers(3, torch.device("cpu"), 1) == 3
    assert load_recipe(None).training.num_workers == "auto"
    with pytest.raises(RecipeError, match=r"training.num_workers: expected one of \['auto'\], got 'many'"):
        load_recipe(None, {"training.num_workers": "many"})
    defaults = load_recipe(None).training
    assert defaults.mixed_precision is None and defaults.compile is None  # the launcher decides
    assert (
        load_recipe(None, cli_overrides(["--training.mixed_precision", "no"])).training.mixed_precision
        == "no"
    )
    assert read_yaml("mixed_precision: no") == {"mixed_precision": "no"}  # YAML 1.2: the word, not false


SAVED = {"bottleneck_dim": 16, "shared_dim": 8, "modules_to_save": ["visual_projection"]}


def test_a_bfloat16_base_trains_a_float32_adapter(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out", max_steps=6
    )
    result = train(load_recipe(recipe, {"training.base_dtype": "bfloat16"}))
    assert result.cost["base_dtype"] == "bfloat16"
    metrics = metrics_of(tmp_path / "out")
    assert len(metrics["train_loss"]) == 6 and all(0 < p["loss"] < 100 for p in metrics["train_loss"])
    adapter = load_file(
        tmp_path / "out" / "checkpoints" / "step_00000006" / "adapter" / "adapter_model.safetensors"
    )
    assert {tensor.dtype for tensor in adapter.values()} == {torch.float32}
    assert adapter["base_model.mrs_adapter.shared_up.weight"].abs().sum() > 0
    with pytest.raises(RecipeError, match=r"base_dtype: full \(full fine-tuning\) trains base weights"):
        train(
            load_recipe(
                recipe,
                {
                    "training.base_dtype": "bfloat16",
                    "method.name": "full",
                    "method.config": {},
                    "output_dir": str(tmp_path / "f"),
                },
            )
        )
    with pytest.raises(RecipeError, match=r"modules_to_save \['visual_projection'\] trains copies"):
        overrides = {
            "training.base_dtype": "bfloat16",
            "output_dir": str(tmp_path / "m"),
            "method.config": SAVED,
        }
        train(load_recipe(recipe, overrides))


def test_modules_to_save_train_and_are_saved_with_the_adapter(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out", max_steps=3
    )
    train(load_recipe(recipe, {"method.config": SAVED}))
    adapter_dir = tmp_path / "out" / "checkpoints" / "step_00000003" / "adapter"
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    assert sorted(key for key in saved if "projection" in key) == [
        "base_model.model.visual_projection.weight"
    ]
    base = CLIPModel.from_pretrained(tiny_clip_dir)
    assert not torch.allclose(
        saved["base_model.model.visual_projection.weight"], base.visual_projection.weight
    )
    loaded = PeftModel.from_pretrained(base, adapter_dir)
    torch.testing.assert_close(
        loaded.base_model.model.visual_projection.modules_to_save["default"].weight,
        saved["base_model.model.visual_projection.weight"],
    )


def test_gradient_checkpointing_trains_the_same_adapter(tmp_path, tiny_clip_dir, synthetic_dir):
    adapters = {}
    for checkpointing in (False, True):
        out = tmp_path / str(checkpointing)
        recipe = write_recipe(
            tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, out, max_steps=3,
            gradient_checkpointing=checkpointing,
        )  # fmt: skip
        assert train(load_recipe(recipe)).cost["gradient_checkpointing"] is checkpointing
        adapters[checkpointing] = load_file(
            out / "checkpoints" / "step_00000003" / "adapter" / "adapter_model.safetensors"
        )
    for key, tensor in adapters[False].items():
        torch.testing.assert_close(adapters[True][key], tensor, rtol=1e-5, atol=1e-6)


def test_randaugment_trains_and_a_malformed_setting_is_named(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out", max_steps=2
    )
    train(load_recipe(recipe, {"data.augment": True, "data.randaugment": [2, 7]}))
    assert len(metrics_of(tmp_path / "out")["train_loss"]) == 2
    with pytest.raises(RecipeError, match=r"data.randaugment: expected \[num_ops, magnitude\]"):
        train(load_recipe(recipe, {"data.randaugment": [2, 7, 1], "output_dir": str(tmp_path / "bad")}))


def test_the_selected_adapter_is_tested_on_other_datasets_too(tmp_path, tiny_clip_dir, synthetic_dir):
    other = write_seed_layout(tmp_path, "other", num_train=6, num_test=9, seed=5, image_size=32)
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out", max_steps=3
    )
    result = train(load_recipe(recipe, {"evaluation.test_datasets": [str(other)]}))
    by_dataset = metrics_of(tmp_path / "out")["test_by_dataset"]
    assert set(by_dataset) == {"synthrs", "other", "mean"}
    assert by_dataset["synthrs"] == result.test_metrics
    adapter = PeftModel.from_pretrained(
        CLIPModel.from_pretrained(tiny_clip_dir), tmp_path / "out" / "adapter"
    )
    direct = evaluate_retrieval(
        adapter.eval(), load_rsitr(other)["test"], CLIPProcessor.from_pretrained(tiny_clip_dir)
    )
    assert by_dataset["other"] == pytest.approx(direct)
    assert by_dataset["mean"]["mR"] == pytest.approx((by_dataset["synthrs"]["mR"] + direct["mR"]) / 2)
    with pytest.raises(RecipeError, match=r"^evaluation.test_datasets: .* is not a folder"):
        train(load_recipe(recipe, {"evaluation.test_datasets": [str(tmp_path / "none_precomp")]}))
