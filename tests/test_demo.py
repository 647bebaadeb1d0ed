import json
from pathlib import Path

import pytest

from rsitr_hf.demo import run_demo
from rsitr_hf.evaluation import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_source": 40, "num_target": 40, "num_test": 10, "pretrain_epochs": 1}


def test_demo_runs_offline_end_to_end_and_caches_its_base(tmp_path, capsys):
    overrides = ["--training.epochs", "1", "--training.batch_size", "16"]
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
