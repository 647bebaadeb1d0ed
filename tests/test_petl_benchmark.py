"""Smoke test of the PETL harness on a tiny config: real subprocess runs, tables, plot, resumption."""

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from peft import PeftModel
from transformers import CLIPModel, CLIPProcessor

import rsitr_hf  # noqa: F401  (registers the tuners with peft)
from rsitr_hf.data import load_rsitr
from rsitr_hf.evaluation import METRIC_KEYS, evaluate_retrieval
from rsitr_hf.tools.petl import main
from rsitr_hf.tools.petl_harness import run_benchmark, summarise
from rsitr_hf.tools.petl_tables import results_markdown
from rsitr_hf.training.recipe import RecipeError

METHODS = {
    "zero_shot": {"method": {"name": "zero_shot"}},
    "linear_probe": {"method": {"name": "linear_probe"}},
    "houlsby": {"method": {"name": "bottleneck_adapter", "config": {"bottleneck_dim": 8}}},
    "mrs": {"method": {"name": "mrs_adapter", "config": {"bottleneck_dim": 16, "shared_dim": 8}}},
}


def write_benchmark(root: Path, tiny_clip_dir, synthetic_dir, methods=None, **extra) -> Path:
    recipe = {
        "base_model": str(tiny_clip_dir),
        # no validation split: the last adapter is tested, so each trained row differs from zero-shot
        "data": {"path": str(synthetic_dir), "validation_fraction": 0.0},
        "optimizer": {"lr": 1.0e-2},
        "schedule": {"name": "cosine"},
        "training": {"epochs": 1, "batch_size": 16, "eval_batch_size": 32},
    }
    (root / "shared_recipe.yaml").write_text(yaml.safe_dump(recipe))
    benchmark = {
        "recipe": str(root / "shared_recipe.yaml"),
        "output_dir": str(root / "out"),
        "seeds": [0, 1],
        "methods": methods or METHODS,
        **extra,
    }
    (root / "benchmark.yaml").write_text(yaml.safe_dump(benchmark, sort_keys=False))
    return root / "benchmark.yaml"


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory, tiny_clip_dir, synthetic_dir):
    root = tmp_path_factory.mktemp("petl")
    config = write_benchmark(root, tiny_clip_dir, synthetic_dir)
    return config, run_benchmark(config), root / "out"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_table_rows_parameters_and_statistics(benchmark_run, tiny_clip_dir):
    _, summaries, out = benchmark_run
    rows = {row["method"]: row for row in read_csv(out / "results.csv")}
    assert list(rows) == list(METHODS)
    base = CLIPModel.from_pretrained(tiny_clip_dir)
    base_parameters = sum(p.numel() for p in base.parameters())
    projections = base.visual_projection.weight.numel() + base.text_projection.weight.numel()
    houlsby = 2 * sum(2 * (2 * width * 8 + 8 + width) for width in (48, 32))  # 2 blocks, 2 adapters each
    expected = {"zero_shot": 0, "linear_probe": projections, "houlsby": houlsby}
    for method, count in expected.items():
        assert int(rows[method]["trainable_parameters"]) == count
    assert all(int(row["base_parameters"]) == base_parameters for row in rows.values())
    assert float(rows["houlsby"]["trainable_percent"]) == pytest.approx(
        100 * houlsby / base_parameters, abs=1e-4
    )

    runs = read_csv(out / "runs.csv")
    assert [(r["method"], r["seed"]) for r in runs] == [("zero_shot", "0")] + [
        (m, s) for m in ("linear_probe", "houlsby", "mrs") for s in ("0", "1")
    ]
    for method in ("linear_probe", "houlsby", "mrs"):
        values = [float(r["mR"]) for r in runs if r["method"] == method]
        assert float(rows[method]["mR_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-4)
        assert float(rows[method]["mR_std"]) == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert float(rows[method]["seconds_per_step"]) > 0 and float(rows[method]["peak_memory_mb"]) > 0
        assert rows[method]["seeds"] == "0 1"
    assert rows["zero_shot"]["mR_std"] == "0.0000" and rows["zero_shot"]["seconds_per_step"] == ""
    # the seeds really differ (initialisations, data orders), and training changed every method's result
    assert len({float(r["mR"]) for r in runs if r["method"] == "mrs"}) == 2
    assert all(
        float(rows[m]["mR_mean"]) != float(rows["zero_shot"]["mR_mean"]) for m in METHODS if m != "zero_shot"
    )

    table = (out / "results.md").read_text()
    assert table.count("\n") == 2 + len(METHODS) and "mR" in table.splitlines()[0]
    # the same runs under the papers' tie handling, every method with a row
    reference = (out / "results_reference_ties.md").read_text()
    assert [line.split(" | ")[0] for line in reference.splitlines()[2:]] == [f"| {m}" for m in METHODS]
    assert (out / "mr_vs_trainable_parameters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [s.method for s in summaries] == list(METHODS)


def test_zero_shot_row_is_the_base_models_test_metrics(benchmark_run, tiny_clip_dir, synthetic_dir):
    _, summaries, _ = benchmark_run
    test = load_rsitr(synthetic_dir, validation_fraction=0.0)["test"]
    direct = evaluate_retrieval(
        CLIPModel.from_pretrained(tiny_clip_dir), test, CLIPProcessor.from_pretrained(tiny_clip_dir)
    )
    assert summaries[0].mean == pytest.approx({k: direct[k] for k in METRIC_KEYS})


def test_rerun_reuses_finished_runs_and_completes_an_interrupted_one(benchmark_run):
    config, summaries, out = benchmark_run
    before = {s.method: s.mean for s in summaries}
    kept = (out / "houlsby" / "seed_0" / "metrics.json").stat().st_mtime_ns
    interrupted = out / "mrs" / "seed_1"
    (interrupted / "metrics.json").unlink()  # as if the run had stopped after its last checkpoint
    assert main(["--config", str(config)]) == 0
    assert (out / "houlsby" / "seed_0" / "metrics.json").stat().st_mtime_ns == kept
    assert "resumed from" in (interrupted / "train.log").read_text()
    after = {row["method"]: row for row in read_csv(out / "results.csv")}
    for method, mean in before.items():
        assert float(after[method]["mR_mean"]) == pytest.approx(mean["mR"], abs=1e-4)


def test_bad_benchmark_files_name_the_key(tmp_path, tiny_clip_dir, synthetic_dir):
    config = write_benchmark(tmp_path, tiny_clip_dir, synthetic_dir, sedes=[0])
    with pytest.raises(RecipeError, match="unknown key sedes"):
        run_benchmark(config)
    typo = {"lora": {"method": {"name": "lora"}, "optimiser": {"lr": 1.0}}}
    config = write_benchmark(tmp_path, tiny_clip_dir, synthetic_dir, methods=typo)
    with pytest.raises(RecipeError, match="methods.lora: unknown key optimiser"):
        run_benchmark(config)
    assert not (tmp_path / "out").exists()  # nothing ran
    assert main(["--config", str(config), "--methods", "nope"]) == 2


def test_runs_finished_before_test_ties_still_give_the_main_table(benchmark_run, caplog):
    config, summaries, out = benchmark_run
    old_run = out / "houlsby" / "seed_0" / "metrics.json"
    metrics = json.loads(old_run.read_text())
    del metrics["test_ties"]  # as written by rsitr_hf before test_ties existed
    old_run.write_text(json.dumps(metrics))
    (out / "results_reference_ties.md").unlink()
    rerun = run_benchmark(config)
    assert [s.mean for s in rerun] == [s.mean for s in summaries]
    assert not (out / "results_reference_ties.md").exists()
    assert "predate test_ties" in caplog.text


def test_the_benchmark_files_plan_every_method_harma_included():
    from rsitr_hf.tools.petl_harness import load_benchmark, run_recipes

    root = Path(__file__).resolve().parents[1]
    for name in ("petl_rsicd", "petl_rsitmd", "petl_ucm", "petl_synthetic"):
        benchmark, shared = load_benchmark(root / "benchmarks" / f"{name}.yaml")
        if name == "petl_synthetic":  # its base and data are the demo's, prepared when it runs
            shared["base_model"] = "openai/clip-vit-base-patch32"
        planned = run_recipes(benchmark, shared, [0, 1])
        assert {"zero_shot", "mrs_adapter_hmmc", "posapl", "harma"} <= set(planned), name
        harma = planned["harma"][0][1]
        assert (harma.method.name, harma.loss.name, harma.optimizer.decay_biases) == ("harma", "harma", False)
        assert [seed for seed, _ in planned["harma"]] == [0, 1] and len(planned["zero_shot"]) == 1


def test_retention_is_averaged_over_runs_and_datasets_and_shown_beside_mr():
    def run(seed: int, retentions: list[float | None]) -> tuple[int, dict]:
        test = {key: 10.0 + seed for key in METRIC_KEYS}
        cost = {"trainable_parameters": 10, "base_parameters": 1000, "seconds_per_step": 0.1}
        classification = [{"dataset": f"d{i}", "retention_top1": r} for i, r in enumerate(retentions)]
        return seed, {"test": test, "cost": cost, "zero_shot_classification": classification}

    adapted = summarise("mrs", [run(0, [0.9, 0.8]), run(1, [0.7, None])])
    assert adapted.retention == pytest.approx(statistics.fmean([0.9, 0.8, 0.7]))
    plain = summarise("full", [(0, {"test": run(0, [])[1]["test"], "cost": run(0, [])[1]["cost"]})])
    assert plain.retention is None
    table = results_markdown([adapted, plain]).splitlines()
    assert table[0].split(" | ")[len(METRIC_KEYS) + 3] == "retention"
    assert "| **10.50 ± 0.71** | 0.800 |" in table[2]  # mR of seeds 0 and 1, then (0.9 + 0.8 + 0.7) / 3
    assert "| **10.00 ± 0.00** | – |" in table[3]
    assert "retention" not in results_markdown([plain])


def test_the_transfer_matrix_trains_on_each_domain_and_tests_on_both(tmp_path, tiny_clip_dir):
    from rsitr_hf.demo.synthetic import write_seed_layout

    domains = {
        name: write_seed_layout(tmp_path / "data", name, 30, 12, seed=3, domain=domain, image_size=32)
        for name, domain in (("synthsrc", "source"), ("synthtgt", "target"))
    }
    methods = {name: METHODS[name] for name in ("zero_shot", "mrs")}
    config = write_benchmark(tmp_path, tiny_clip_dir, domains["synthsrc"], methods, transfer=[
        str(folder) for folder in domains.values()])  # fmt: skip
    summaries = run_benchmark(config)
    out = tmp_path / "out"
    assert [s.method for s in summaries] == [f"{m} @ {d}" for m in methods for d in domains]
    cells = {(r["method"], r["trained_on"], r["tested_on"]): r for r in read_csv(out / "transfer.csv")}
    assert len(cells) == 2 * 2 * 2
    base = CLIPModel.from_pretrained(tiny_clip_dir)
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    for test, folder in domains.items():
        test_split = load_rsitr(folder)["test"]
        direct = evaluate_retrieval(base, test_split, processor)["mR"]
        for train in domains:  # the base model does not depend on the training set
            assert float(cells[("zero_shot", train, test)]["mR_mean"]) == pytest.approx(direct, abs=1e-4)
        for train in domains:
            runs = [out / "mrs" / train / f"seed_{seed}" for seed in (0, 1)]
            scores = [
                json.loads((run / "metrics.json").read_text())["test_by_dataset"][test]["mR"] for run in runs
            ]
            cell = cells[("mrs", train, test)]
            assert float(cell["mR_mean"]) == pytest.approx(statistics.fmean(scores), abs=1e-4)
            assert float(cell["mR_std"]) == pytest.approx(statistics.stdev(scores), abs=1e-4)
            adapted = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), runs[0] / "adapter")
            assert evaluate_retrieval(adapted, test_split, processor)["mR"] == pytest.approx(scores[0])
    own = json.loads((out / "mrs" / "synthtgt" / "seed_1" / "metrics.json").read_text())
    assert own["test"]["mR"] == pytest.approx(own["test_by_dataset"]["synthtgt"]["mR"])
    assert (out / "transfer_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "transfer matrices" in (out / "results.md").read_text()


def test_the_transfer_benchmark_files_plan_every_method_on_every_dataset():
    from rsitr_hf.tools.petl_harness import load_benchmark, run_recipes

    root = Path(__file__).resolve().parents[1]
    for name, datasets in (
        ("petl_transfer", ["rsicd", "rsitmd", "ucm"]),
        ("petl_transfer_synthetic", ["source", "target"]),
    ):
        benchmark, shared = load_benchmark(root / "benchmarks" / f"{name}.yaml")
        planned = run_recipes(benchmark, shared, [0, 1])
        assert list(planned) == [
            f"{method} @ {dataset}" for method in benchmark.methods for dataset in datasets
        ]
        for method in benchmark.methods:
            for dataset in datasets:
                runs = planned[f"{method} @ {dataset}"]
                recipe = runs[-1][1]
                assert Path(recipe.data.path).name == f"{dataset}_precomp" and not recipe.data.datasets
                tested = sorted(Path(path).name for path in recipe.evaluation.test_datasets)
                assert tested == sorted(f"{other}_precomp" for other in datasets if other != dataset)
                assert Path(recipe.output_dir).parts[-3:-1] == (method, dataset)
                assert len(runs) == (1 if method == "zero_shot" else 2)


def test_a_transfer_list_needs_two_named_datasets(tmp_path, tiny_clip_dir, synthetic_dir):
    for transfer, message in (
        ([str(synthetic_dir)], "transfer: expected two or more differently named datasets"),
        (
            [str(synthetic_dir), str(synthetic_dir)],
            "transfer: expected two or more differently named datasets",
        ),
        ([str(synthetic_dir), str(tmp_path)], "transfer: .*expected a folder named '<name>_precomp'"),
    ):
        config = write_benchmark(tmp_path, tiny_clip_dir, synthetic_dir, transfer=transfer)
        with pytest.raises(RecipeError, match=message):
            run_benchmark(config)
    assert not (tmp_path / "out").exists()  # nothing ran
