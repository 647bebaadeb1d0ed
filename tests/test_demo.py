import json
from pathlib import Path

import pytest

from rsitr_hf.demo import main, run_demo
from rsitr_hf.evaluation import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_source": 40, "num_target": 40, "num_test": 10, "pretrain_epochs": 1}


def test_demo_runs_offline_end_to_end_and_caches_its_base(tmp_path, capsys):
    overrides = {"training.epochs": 1, "training.batch_size": 16}
    rows = run_demo(tmp_path, ROOT / "hub_configs" / "demo.yaml", overrides=overrides, **SMALL)
    assert set(rows) == {"zero-shot", "adapted", "reloaded"}
    assert all(set(metrics) == set(METRIC_KEYS) for metrics in rows.values())
    assert rows["reloaded"] == pytest.approx(rows["adapted"])
    assert json.loads((tmp_path / "demo_results.json").read_text()) == rows
    assert (tmp_path / "base" / "config.json").is_file() and (tmp_path / "base" / "tokenizer.json").is_file()
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    output = capsys.readouterr().out
    assert "| zero-shot |" in output and "| adapted |" in output and "metrics match" in output

    stamp = (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns
    again = run_demo(tmp_path, ROOT / "hub_configs" / "demo.yaml", overrides=overrides, **SMALL)
    assert (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns == stamp  # base reused
    assert again["zero-shot"] == rows["zero-shot"] and again["adapted"] == pytest.approx(rows["adapted"])

    # --prepare_only names the task's folders (prepared already here) and trains nothing
    capsys.readouterr()
    adapter = tmp_path / "run" / "adapter" / "adapter_model.safetensors"
    trained = adapter.stat().st_mtime_ns
    assert main(["--prepare_only", "--output_dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"base model: {tmp_path / 'base'}" in printed
    assert f"data: {tmp_path / 'data' / 'target_precomp'}" in printed
    assert adapter.stat().st_mtime_ns == trained


def test_the_demo_checks_the_readme_table_and_can_rewrite_it(tmp_path, monkeypatch):
    from rsitr_hf.demo import readme as demo_readme
    from rsitr_hf.demo.readme import StaleReadme, check_readme, printed_figures, update_readme

    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    recorded = demo_readme.readme_figures(readme.read_text())
    rows = {key: dict(zip(METRIC_KEYS, map(float, cells), strict=True)) for key, cells in recorded.items()}
    machine = demo_readme.MACHINE_LINE.search(readme.read_text()).group("machine")
    monkeypatch.setattr(demo_readme, "this_machine", lambda: machine)
    assert check_readme(rows, readme) == f"the figures equal {readme}'s table"

    changed = {key: {**metrics, "mR": metrics["mR"] + 1} for key, metrics in rows.items()}
    with pytest.raises(StaleReadme, match="demo table is stale"):
        check_readme(changed, readme)
    monkeypatch.setattr(demo_readme, "this_machine", lambda: "another CPU, AVX2, 8 torch threads")
    assert "which came from" in check_readme(
        changed, readme
    ) and "this machine is 'another CPU" in check_readme(changed, readme)
    update_readme(changed, readme)
    assert demo_readme.readme_figures(readme.read_text()) == printed_figures(changed)
    assert "Figures of: `another CPU, AVX2, 8 torch threads`" in readme.read_text()
    assert check_readme(changed, readme).startswith("the figures equal")
