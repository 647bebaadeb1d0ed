"""benchmarks/gpu_check.py --dry_run: the one-command GPU check runs end to end on the CPU at toy size, so
that it cannot rot between GPU runs."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import HANG_TIMEOUT, subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_measures_every_target_and_checks_the_launcher(tmp_path, stanza_tagger_path):
    out_dir = tmp_path / "out"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry_run", "--work_dir",
        str(tmp_path / "work"), "--out_dir", str(out_dir), "--pos_model", str(stanza_tagger_path),
    ]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, env=subprocess_env(), timeout=HANG_TIMEOUT
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    record = json.loads((out_dir / "gpu_check.json").read_text())
    assert record["dry_run"] is True and record["batch_size"] == 8 and record["steps"] == 4
    assert record["pos_tagger"].startswith("carried") and record["versions"]["torch"] != "absent"

    runs = record["results"]["runs"]
    assert set(runs) == {"MRS-Adapter + HMMC, eager", "MRS-Adapter + HMMC, compiled", "POSAPL", "HarMA",
                         "full fine-tuning + HMMC"}  # fmt: skip
    assert "skipped" in runs["MRS-Adapter + HMMC, compiled"]  # compiled on CUDA only
    for name, run in runs.items():
        if "skipped" in run:
            continue
        assert run["end_to_end"]["pairs_per_second"] > 0 and run["model_only"]["pairs_per_second"] > 0, name
        assert run["end_to_end"]["cost"]["mixed_precision"] == "bf16"
    evaluation = record["results"]["evaluation"]
    assert evaluation["images"] == 16 and 0 < evaluation["warm_seconds"] and 0 < evaluation["cold_seconds"]

    launches = record["results"]["launches"]
    assert len(launches) == 2
    for launch in launches.values():  # bf16 from the launcher, not the recipe; workers and cache as resolved
        cost = launch["cost"]
        assert (
            cost["mixed_precision"] == "bf16" and cost["mixed_precision_from"] == "accelerate launch/config"
        )
        assert cost["num_workers"] == launch["expected_workers"] == 0 and cost["image_cache"] is True
        assert launch["met"] is True

    targets = {row["target"]: row for row in record["targets"]}
    assert len(targets) == 12
    assert targets["MRS+HMMC end to end, eager (pairs/s) >= 2,700"]["status"] == "not judged (CPU dry run)"
    assert targets["MRS+HMMC end to end, compiled (pairs/s) >= 4,500"]["status"] == "not measured"
    eager = runs["MRS-Adapter + HMMC, eager"]
    ratio = eager["end_to_end"]["pairs_per_second"] / eager["model_only"]["pairs_per_second"]
    assert targets["MRS-Adapter + HMMC, eager: end to end / model-only >= 0.9"]["measured"] == ratio
    report = (out_dir / "gpu_check.md").read_text()
    assert report.startswith("# GPU check: CPU") and "(CPU dry run: toy task)" in report
    assert all(target in report for target in targets) and report.count("| met |") == 2
