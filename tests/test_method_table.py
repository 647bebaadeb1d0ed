"""The method table: a fourth method declared here, in this file alone, trains through ``train()``, has its
tag on the model card, is a choice in ``--help`` and runs in ``rsitr-petl``, with no edit to ``rsitr_hf/``.

The declared method is peft's (IA)^3. ``rsitr-petl`` trains each run in its own process: there the launcher
is this file run as a script, which declares the method again and then is ``rsitr-train``.
"""

import json
import sys

import pytest
from peft import IA3Config

from rsitr_hf import MethodSpec, register_method
from rsitr_hf.training.cli import main

IA3 = register_method(
    MethodSpec(
        name="ia3",
        summary="peft's (IA)^3 scaling vectors",
        config_class=IA3Config,
        config_defaults={"target_modules": ["k_proj", "v_proj", "fc2"], "feedforward_modules": ["fc2"]},
        hub_tags=("ia3",),
        card_text="(IA)^3: learned vectors scale the attention keys and values and the MLP's activations.",
    )
)
# (IA)^3 on the tiny CLIP of conftest: per block k and v (the tower's width) and fc2's input (4 x the width)
IA3_PARAMETERS = 2 * (6 * 32 + 6 * 48)


def test_a_method_declared_outside_rsitr_hf_trains_through_train(tmp_path, tiny_clip_dir, synthetic_dir):
    from conftest import write_recipe

    from rsitr_hf.training import load_recipe, train

    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out", max_steps=3
    )
    result = train(load_recipe(recipe, {"method.name": "ia3", "method.config": {}}))
    assert result.cost["trainable_parameters"] == IA3_PARAMETERS
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [e["step"] for e in metrics["evaluations"] if e["split"] == "validation"] == [0, 3]
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3" and config["feedforward_modules"] == ["fc2"]
    assert result.test_metrics["mR"] >= 0


def test_its_model_card_has_its_tag_and_text():
    from rsitr_hf.training import load_recipe, model_card

    recipe = load_recipe(None, {"method.name": "ia3", "base_model": "openai/clip-vit-base-patch32"})
    card = str(model_card(recipe.to_dict(), {"rsicd": {"mR": 12.5}}, "me/ia3-rsicd"))
    assert "- ia3" in card and "library_name: peft" in card and IA3.card_text in card
    assert 'PeftModel.from_pretrained(base, "me/ia3-rsicd")' in card


def test_it_is_a_choice_of_method_name_in_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps the help where it likes
    assert "ia3(peft's(IA)^3scalingvectors)" in text
    assert "mrs_adapter(PE-RSITR'sMRS-Adapter)" in text  # beside the methods rsitr_hf declares itself


def test_it_runs_in_rsitr_petl_beside_the_zero_shot_base(tmp_path, tiny_clip_dir, synthetic_dir):
    import yaml
    from conftest import write_recipe

    from rsitr_hf.tools.petl import run_benchmark

    shared = write_recipe(
        tmp_path / "shared.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "unused", max_steps=2
    )
    benchmark = {
        "recipe": str(shared),
        "seeds": [0, 1],
        "output_dir": str(tmp_path / "petl"),
        "launcher": [sys.executable, __file__],
        "methods": {"zero_shot": {"method": {"name": "zero_shot"}}, "ia3": {"method": {"name": "ia3"}}},
    }
    (tmp_path / "benchmark.yaml").write_text(yaml.safe_dump(benchmark))
    rows = {row.method: row for row in run_benchmark(tmp_path / "benchmark.yaml")}
    assert rows["ia3"].trainable_parameters == IA3_PARAMETERS and rows["ia3"].seeds == [0, 1]
    assert rows["zero_shot"].trainable_parameters == 0 and rows["zero_shot"].seeds == [0]
    assert "| ia3 | 960 |" in (tmp_path / "petl" / "results.md").read_text()


def test_a_name_already_taken_cannot_be_declared_again():
    register_method(IA3)  # the same declaration again: nothing changes
    with pytest.raises(ValueError, match="a different method is already registered as 'ia3'"):
        register_method(MethodSpec(name="ia3", summary="something else"))


if __name__ == "__main__":  # rsitr-petl's launcher: this file's method, then rsitr-train
    sys.exit(main())
