import json

from rsitr_hf.demo import run_demo
from rsitr_hf.evaluation import METRIC_KEYS


def test_demo_runs_offline_and_caches_its_inputs(tmp_path, capsys):
    metrics = run_demo(tmp_path, num_train=20, num_test=10, image_size=32)
    assert set(metrics) == set(METRIC_KEYS)
    assert json.loads((tmp_path / "zero_shot_metrics.json").read_text()) == metrics
    assert (tmp_path / "tiny-clip-base" / "config.json").is_file()
    first_images = sorted((tmp_path / "data" / "synthrs_precomp" / "synthrs_images").iterdir())
    stamp = first_images[0].stat().st_mtime_ns
    assert run_demo(tmp_path, num_train=20, num_test=10, image_size=32) == metrics
    assert first_images[0].stat().st_mtime_ns == stamp  # data reused, not regenerated
    assert "| zero-shot |" in capsys.readouterr().out
