"""Every GPU target of issue 11 measured by one command, on a machine with one CUDA GPU and no network.

    python benchmarks/gpu_check.py [--work_dir outputs/gpu_check] [--out_dir benchmarks/gpu_check]
        [--pos_model TAGGER.pt] [--steps 20] [--dry_run]

It builds the RSICD-shaped task of ``bench_end_to_end.py`` (the real RSICD split files, 10,921 synthetic
224-px JPEGs, a ViT-B/32-shaped CLIP with random weights; reused when already in ``--work_dir``), then runs,
each in a fresh process, at batch 256 in bf16:

- the MRS-Adapter + HMMC step end to end through ``train()`` and model-only (the same step on one batch
  kept on the device), eager and under ``training.compile`` (with the first step's time: the compilation);
- POSAPL (its RSICD recipe), HarMA and full fine-tuning, end to end and model-only (full fine-tuning gives
  the MRS/full time and peak-memory ratios);
- one RSICD test evaluation (1,093 images, 5,465 captions), cold and warm;
- two short ``accelerate launch train_accelerate.py`` runs whose recipe leaves the precision unset: one with
  ``--mixed_precision bf16`` on the command line, one with an accelerate config file saying ``bf16``; each
  run's ``metrics.json`` must record bf16 taken from the launcher, the data workers ``auto`` resolves to on
  this machine, and the image cache on.

POSAPL needs a stanza POS tagger: ``--pos_model`` (carry one), else ``$RSITR_POS_MODEL``, else one trained
offline from the packaged UD English-EWT into the work dir (about a minute on a GPU machine's CPUs, three
on 2 cores); the report says which. It writes ``gpu_check.json`` (every measurement, the device, the
versions) and ``gpu_check.md`` (each target beside the measured figure, met or not) to ``--out_dir``.

``--dry_run`` does the same on the CPU with a toy task (48 + 16 images, a tiny CLIP, batch 8, 4 steps) so
that the script cannot rot between GPU runs (``tests/test_gpu_check.py`` runs it); its speed figures are
not judged against the targets, and the compiled runs are left out (CPU compilation takes minutes).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_end_to_end as e2e  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = {  # row name: (method of bench_end_to_end, compiled)
    "MRS-Adapter + HMMC, eager": ("mrs", False),
    "MRS-Adapter + HMMC, compiled": ("mrs", True),
    "POSAPL": ("posapl", False),
    "HarMA": ("harma", False),
    "full fine-tuning + HMMC": ("full", False),
}
SPEED_TARGETS = [  # (what, row, key, at least) from issue 11, at batch 256 in bf16 on an H100
    ("MRS+HMMC end to end, compiled (pairs/s)", "MRS-Adapter + HMMC, compiled", "end_to_end", 4500),
    ("MRS+HMMC end to end, eager (pairs/s)", "MRS-Adapter + HMMC, eager", "end_to_end", 2700),
    ("POSAPL end to end (pairs/s)", "POSAPL", "end_to_end", 2900),
]
EFFICIENCY_TARGET = 0.9  # end to end / model-only, every method
EVALUATION_TARGETS = {"warm_seconds": 1.0, "cold_seconds": 2.0}
VERSIONED = ("torch", "transformers", "peft", "accelerate", "datasets", "stanza", "rsitr_hf")


# --- Measurements ----------------------------------------------------------------------------------------


def bench_arguments(args, compiled: bool = False) -> argparse.Namespace:
    """The namespace ``bench_end_to_end.run_isolated`` expects, for this check's settings."""
    return argparse.Namespace(
        device=args.device, work_dir=args.work_dir, batch_size=args.batch_size,
        eval_batch_size=args.batch_size, steps=args.steps, precision="bf16", train_workers="auto",
        pipeline_batches=1, pipeline_batch_size=args.batch_size, compile=compiled, pos_model=args.pos_model,
        toy=args.dry_run,
    )  # fmt: skip


def measure_runs(args) -> dict:
    """Each row of ``RUNS`` end to end and model-only (compiled rows: on CUDA only)."""
    runs = {}
    for row, (method, compiled) in RUNS.items():
        if compiled and args.device != "cuda":
            runs[row] = {"skipped": "compilation is measured on CUDA only"}
            continue
        bench = bench_arguments(args, compiled)
        runs[row] = {
            "end_to_end": e2e.run_isolated("train", bench, ["--method", method]),
            "model_only": e2e.run_isolated("model_only", bench, ["--method", method]),
        }
    return runs


def launch_recipe(args, data: Path, model: Path, output_dir: Path) -> Path:
    """A short MRS-Adapter run that leaves ``training.mixed_precision`` and ``compile`` to the launcher."""
    recipe = {
        "base_model": str(model),
        "output_dir": str(output_dir),
        "method": {"name": "mrs_adapter"},
        "loss": {"name": "hmmc"},
        "data": {"path": str(data), "validation_fraction": 0.05},
        "training": {"epochs": 1, "max_steps": 2, "batch_size": args.batch_size, "num_workers": "auto"},
    }
    path = output_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def accelerate_config(args, path: Path) -> Path:
    config = {
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "NO", "mixed_precision": "bf16",
        "num_machines": 1, "num_processes": 1, "use_cpu": args.device != "cuda", "dynamo_config": {},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def measure_launches(args, data: Path, model: Path) -> dict:
    """``accelerate launch`` with ``--mixed_precision bf16``, and with a config file saying bf16: what each
    run's ``metrics.json`` records (``cost``), and whether it is what it should be."""
    import torch

    from rsitr_hf.training.data import resolve_num_workers

    expected_workers = resolve_num_workers("auto", torch.device(args.device), 1)
    launches = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        launcher = ["--cpu"] if args.device != "cuda" else []
        ways = {
            "accelerate launch --mixed_precision bf16": [
                "--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no", *launcher,
                "--mixed_precision", "bf16",
            ],
            "accelerate launch --config_file (mixed_precision: bf16)": [
                "--config_file", str(accelerate_config(args, folder / "accelerate.yaml")),
            ],
        }  # fmt: skip
        for number, (name, options) in enumerate(ways.items()):
            output_dir = folder / f"run_{number}"
            command = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                *options,
                str(ROOT / "train_accelerate.py"),
            ]
            command += ["--config", str(launch_recipe(args, data, model, output_dir))]
            started = time.perf_counter()
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{completed.stderr[-4000:]}")
            cost = json.loads((output_dir / "metrics.json").read_text())["cost"]
            launches[name] = {
                "seconds": time.perf_counter() - started,
                "cost": cost,
                "expected_workers": expected_workers,
                "met": cost["mixed_precision"] == "bf16"
                and cost["mixed_precision_from"] == "accelerate launch/config"
                and cost["num_workers"] == expected_workers
                and cost["image_cache"] is True,
            }
            print(name, json.dumps(launches[name]), flush=True)
    return launches


# --- Report ----------------------------------------------------------------------------------------------


def rate(runs: dict, row: str, key: str) -> float | None:
    return runs.get(row, {}).get(key, {}).get("pairs_per_second")


def judged(measured: float | None, met: bool, dry_run: bool) -> str:
    if measured is None:
        return "not measured"
    return "not judged (CPU dry run)" if dry_run else ("met" if met else "NOT MET")


def targets(results: dict, dry_run: bool) -> list[dict]:
    """Each target of issue 11 beside its measured figure."""
    runs, rows = results["runs"], []

    def add(target: str, value, met: bool) -> None:
        rows.append({"target": target, "measured": value, "status": judged(value, met, dry_run)})

    for what, row, key, least in SPEED_TARGETS:
        value = rate(runs, row, key)
        add(f"{what} >= {least:,}", value, value is not None and value >= least)
    for row in RUNS:
        end_to_end, model_only = rate(runs, row, "end_to_end"), rate(runs, row, "model_only")
        value = end_to_end / model_only if end_to_end and model_only else None
        add(
            f"{row}: end to end / model-only >= {EFFICIENCY_TARGET}",
            value,
            value is not None and value >= EFFICIENCY_TARGET,
        )
    for key, most in EVALUATION_TARGETS.items():
        value = results["evaluation"].get(key)
        add(
            f"RSICD test evaluation, {key.split('_')[0]} <= {most} s",
            value,
            value is not None and value <= most,
        )
    for name, launch in results["launches"].items():
        cost = launch["cost"]
        shown = (
            f"{cost['mixed_precision']} from {cost['mixed_precision_from']}, {cost['num_workers']} workers "
            f"(expected {launch['expected_workers']}), image cache {'on' if cost['image_cache'] else 'off'}"
        )
        rows.append({"target": f"{name} reaches the run (metrics.json)", "measured": shown,
                     "status": "met" if launch["met"] else "NOT MET"})  # fmt: skip
    return rows


def ratios(runs: dict) -> dict:
    """MRS / full fine-tuning: model-only step time and peak memory (the GPU notes' 0.82 and 11.2/18.0)."""
    mrs, full = runs["MRS-Adapter + HMMC, eager"]["model_only"], runs["full fine-tuning + HMMC"]["model_only"]
    time_ratio = mrs["seconds_per_step"] / full["seconds_per_step"]
    memory = (mrs.get("peak_cuda_mb"), full.get("peak_cuda_mb"))
    return {"time": time_ratio, "memory": memory[0] / memory[1] if all(memory) else None}


def figure(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:,.0f}" if value >= 100 else f"{value:.3f}"


def markdown(record: dict) -> str:
    lines = [
        f"# GPU check: {record['device']}" + (" (CPU dry run: toy task)" if record["dry_run"] else ""),
        "",
        f"Batch {record['batch_size']}, bf16, {record['steps']} steps per run; POS tagger: "
        f"{record['pos_tagger']}; "
        + ", ".join(f"{name} {version}" for name, version in record["versions"].items()),
        "",
        "| target (issue 11) | measured | status |",
        "|---|---|---|",
    ]
    lines += [
        f"| {row['target']} | {figure(row['measured'])} | {row['status']} |" for row in record["targets"]
    ]
    lines += [
        "",
        "| run | end to end (pairs/s) | model-only (pairs/s) | first model-only step (s) | peak CUDA MB |",
        "|---|---|---|---|---|",
    ]
    for row, run in record["results"]["runs"].items():
        if "skipped" in run:
            lines.append(f"| {row} | skipped: {run['skipped']} | | | |")
            continue
        only = run["model_only"]
        lines.append(
            f"| {row} | {figure(run['end_to_end']['pairs_per_second'])} | {figure(only['pairs_per_second'])} "
            f"| {only['first_step_seconds']:.1f} | {figure(only['peak_cuda_mb'])} |"
        )
    evaluation, ratio = record["results"]["evaluation"], record["ratios"]
    lines += [
        "",
        f"RSICD-shaped test evaluation ({evaluation['images']:,} images, {evaluation['captions']:,} "
        f"captions): cold {evaluation['cold_seconds']:.2f} s, warm {evaluation['warm_seconds']:.2f} s. MRS / "
        f"full fine-tuning: step time {ratio['time']:.2f}, peak memory {figure(ratio['memory'])}. "
        f"Whole check: {record['seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines)


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    import torch

    found["cuda"] = torch.version.cuda or "none"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work_dir", type=Path, default=Path("outputs/gpu_check"), help="the task, built once"
    )
    parser.add_argument(
        "--out_dir", type=Path, default=Path("benchmarks/gpu_check"), help="JSON and Markdown"
    )
    parser.add_argument(
        "--pos_model", help="stanza tagger .pt for POSAPL (default: $RSITR_POS_MODEL or trained)"
    )
    parser.add_argument("--steps", type=int, help="optimiser steps timed per run (default: 20; dry run: 4)")
    parser.add_argument("--dry_run", action="store_true", help="the CPU, a toy task: checks the script")
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --dry_run to check the script on the CPU")
    started = time.perf_counter()
    args.device = "cpu" if args.dry_run else "cuda"
    args.batch_size, args.steps = (8, args.steps or 4) if args.dry_run else (256, args.steps or 20)
    args.work_dir = args.work_dir.resolve()
    data, model = e2e.build_task(args.work_dir, toy=args.dry_run)
    given = args.pos_model or os.environ.get("RSITR_POS_MODEL")
    args.pos_model = e2e.pos_tagger(args.work_dir, given)
    pos_source = f"carried ({args.pos_model})" if given else "trained offline from UD English-EWT (stanza)"

    results = {
        "runs": measure_runs(args),
        "evaluation": e2e.run_isolated("evaluation", bench_arguments(args), []),
        "launches": measure_launches(args, data, model),
    }
    record = {
        "device": e2e.device_description(args.device),
        "dry_run": args.dry_run,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "pos_tagger": pos_source,
        "versions": versions(),
        "results": results,
        "targets": targets(results, args.dry_run),
        "ratios": ratios(results["runs"]),
        "seconds": time.perf_counter() - started,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "gpu_check.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    text = markdown(record)
    (args.out_dir / "gpu_check.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
