"""The PETL comparison harness (``rsitr-petl``): several methods on the same data, seeds and evaluation.

    rsitr-petl --config benchmarks/petl_synthetic.yaml [--seeds 0 1 2] [--methods lora mrs_hmmc]
        [--output_dir DIR] [--section.field value ...]

A benchmark file (``benchmarks/petl_*.yaml``) names a training recipe shared by every method, the seeds,
and the methods: label -> partial recipe. A partial recipe replaces the shared recipe's ``method``
section and is merged into the other sections (``loss``, ``optimizer`` ...); a method that the method table
declares as not trained (``method: {name: zero_shot}``) evaluates the base model as it is (once: it does not
depend on the seed). ``methods`` may also
be the path of a YAML file holding that mapping, so that several benchmarks share one method list.
``--section.field value`` overrides apply to the shared recipe (``--data.path data/rsitmd_precomp``).

Each (method, seed) run trains in its own process through ``python -m rsitr_hf.training`` (or the
``launcher`` of the benchmark file, e.g. ``[accelerate, launch, -m, rsitr_hf.training]``), so its peak memory
is its own; its outputs go to ``<output_dir>/<method>/seed_<seed>/``. A finished run is never repeated
and an interrupted one resumes from its last checkpoint, so running the same command again completes
an interrupted benchmark. With ``synthetic_task: DIR`` the offline synthetic transfer task of
``rsitr-demo`` (source-pretrained tiny CLIP + target-domain data) is prepared in DIR (or reused) and
becomes the base model and data; POSAPL there uses a small tagger trained offline (cached in DIR).

With ``transfer: [DIR, DIR, ...]`` (seed-layout datasets) every method trains on each dataset in turn and
is tested on all of them (``evaluation.test_datasets``): rows ``<method> @ <dataset>``, outputs in
``<output_dir>/<method>/<dataset>/seed_<seed>/``, and the transfer matrix of each method (trained on ×
tested on, test mR mean ± std) in ``results.md``, ``transfer.csv`` and ``transfer_matrix.png``.

Writes ``results.md`` and ``results.csv`` (trainable parameters and their share of the base model, test
R@1/5/10 both ways and mR as mean ± std over seeds, median wall time per optimiser step, peak memory;
for runs scored on several datasets, test mR by dataset), ``runs.csv`` (one row per run) and
``mr_vs_trainable_parameters.png`` (log scale).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..data.seed_layout import RSITRDataError, infer_name
from ..demo.task import prepare_demo_task
from ..evaluation import METRIC_KEYS, TIE_PROTOCOLS, evaluate_by_ties, mean_metrics, test_results
from ..training import load_datasets, parameter_counts
from ..training.checkpoints import complete_checkpoints
from ..training.data import load_processor, other_test_splits
from ..training.recipe import (
    Recipe,
    RecipeError,
    add_recipe_arguments,
    build,
    read_mapping,
    recipe_overrides,
    save_recipe,
    set_value,
)
from ..tuners.methods import get_method
from ..utils.cli import command, command_parser, parse_arguments
from ..utils.files import write_json
from ..utils.plotting import plt

logger = logging.getLogger(__spec__.name if __spec__ else __name__)  # also under `python -m`


@dataclass
class PETLBenchmark:
    """A benchmark file. ``recipe``: the shared training recipe (relative paths are resolved from the
    working directory); ``methods``: label -> partial recipe, or the path of a YAML file with that mapping;
    ``seeds``: training seeds (3 by default); ``output_dir``: where runs and tables go;
    ``synthetic_task``: a folder to prepare the offline synthetic transfer task in (base model and data);
    ``launcher``: the command that trains one recipe (``--config FILE`` is appended); ``transfer``:
    seed-layout datasets to train each method on in turn, each run tested on all of them (the transfer
    matrix)."""

    recipe: str = ""
    methods: dict | str = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    output_dir: str = "outputs/petl"
    synthetic_task: str | None = None
    launcher: list[str] = field(default_factory=lambda: [sys.executable, "-m", "rsitr_hf.training"])
    transfer: list[str] = field(default_factory=list)


@dataclass
class MethodSummary:
    """One row of the results table: a method's metrics over its runs (mean, sample std)."""

    method: str
    trainable_parameters: int
    base_parameters: int
    seeds: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    seconds_per_step: float | None
    peak_memory_mb: float | None
    memory_kind: str | None
    retention: float | None = None  # zero-shot top-1 kept of the base's (evaluation.classification)
    dataset_mR: dict[str, tuple[float, float]] = field(default_factory=dict)  # test mR by dataset: mean, std

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable_parameters / self.base_parameters


def merge_sections(shared: dict, partial: dict) -> dict:
    """``shared`` with ``partial`` merged in; ``partial["method"]`` replaces the method section whole."""
    merged = dict(shared)
    for key, value in partial.items():
        if key != "method" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_benchmark(path: str | os.PathLike, overrides: dict | None = None) -> tuple[PETLBenchmark, dict]:
    """The benchmark and the shared recipe as a mapping (``overrides``, ``{"section.field": value}``, set;
    validated as a ``Recipe``)."""
    try:
        benchmark = build(PETLBenchmark, read_mapping(path))
        if isinstance(benchmark.methods, str):
            benchmark.methods = build(PETLBenchmark, {"methods": read_mapping(benchmark.methods)}).methods
        if not benchmark.recipe:
            raise RecipeError("recipe: name the shared training recipe")
        if not benchmark.methods or not benchmark.seeds:
            raise RecipeError("methods and seeds must not be empty")
        shared = read_mapping(benchmark.recipe)
        for dotted, value in (overrides or {}).items():
            set_value(shared, dotted, value)
        build(Recipe, shared)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    return benchmark, shared


def row_label(method: str, train_set: str | None) -> str:
    """A row of the results: the method's label, and in a transfer benchmark the dataset it trained on."""
    return method if train_set is None else f"{method} @ {train_set}"


def transfer_sets(benchmark: PETLBenchmark) -> dict[str, str]:
    """``transfer``'s datasets by name (``rsicd_precomp`` -> ``rsicd``); ``{}`` for a benchmark without."""
    if not benchmark.transfer:
        return {}
    try:
        named = {infer_name(Path(path)): path for path in benchmark.transfer}
    except RSITRDataError as error:
        raise RecipeError(f"transfer: {error}") from None
    if len(named) < 2 or len(named) != len(benchmark.transfer):
        raise RecipeError(
            f"transfer: expected two or more differently named datasets, got {benchmark.transfer}"
        )
    return named


def training_sets(benchmark: PETLBenchmark, values: dict) -> list[tuple[str | None, dict]]:
    """``[(None, values)]``, or in a transfer benchmark one ``(dataset, values)`` per dataset, trained on
    it alone and tested on the others too."""
    named = transfer_sets(benchmark)
    if not named:
        return [(None, values)]
    sets = []
    for name, path in named.items():
        others = [other for other in named.values() if other != path]
        alone = {
            "data": {"path": path, "name": None, "datasets": []},
            "evaluation": {"test_datasets": others},
        }
        sets.append((name, merge_sections(values, alone)))
    return sets


def run_recipes(
    benchmark: PETLBenchmark, shared: dict, seeds: list[int]
) -> dict[str, list[tuple[int, Recipe]]]:
    """``{row: [(seed, recipe), ...]}`` (rows: :func:`row_label`), every recipe validated before anything
    runs; a method that is not trained gets one recipe (seed of the first seed)."""
    runs = {}
    output_dir = Path(benchmark.output_dir)
    for label, partial in benchmark.methods.items():
        if not isinstance(partial, dict):
            raise RecipeError(f"methods.{label}: expected a partial recipe (a mapping), got {partial!r}")
        for train_set, values in training_sets(benchmark, merge_sections(shared, partial)):
            row = runs.setdefault(row_label(label, train_set), [])
            for seed in seeds:
                run = merge_sections(values, {"training": {"seed": seed}})
                run["output_dir"] = str(output_dir / label / (train_set or "") / f"seed_{seed}")
                try:
                    recipe = build(Recipe, run)
                except RecipeError as error:
                    raise RecipeError(f"methods.{label}: {error}") from None
                row.append((seed, recipe))
                if not get_method(recipe.method.name).trains:
                    break  # evaluated once: it does not depend on the seed
    return runs


def prepare_synthetic_task(folder: Path, shared: dict, needs_pos_model: bool) -> None:
    """Point ``shared`` at the synthetic transfer task of ``rsitr-demo`` prepared in ``folder``."""
    base, target = prepare_demo_task(folder)
    shared["base_model"], shared.setdefault("data", {})["path"] = str(base), str(target)
    if needs_pos_model and not shared["data"].get("pos_model") and "RSITR_POS_MODEL" not in os.environ:
        from ..data.pos_tagger import train_small_tagger
        from ..data.reference import ud_english_dir

        tagger, ewt = folder / "pos_tagger" / "tagger.pt", ud_english_dir()
        if not tagger.is_file():
            logger.info("training a small POS tagger offline for POSAPL (about 3 min) in %s", tagger.parent)
            train_small_tagger(ewt / "en_ewt-ud-test.conllu", ewt / "en_ewt-ud-dev.conllu", tagger.parent)
        shared["data"]["pos_model"] = str(tagger)


def train_run(recipe: Recipe, launcher: list[str]) -> dict:
    """Train one recipe in its own process (resuming an interrupted run) and return its metrics.json."""
    run_dir = Path(recipe.output_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, run_dir / "benchmark_recipe.yaml")
        command = [*launcher, "--config", str(run_dir / "benchmark_recipe.yaml")]
        if complete_checkpoints(run_dir / "checkpoints"):
            command += ["--resume_from_checkpoint", "latest"]
        else:  # nothing resumable: whatever an interrupted attempt left is replaced
            command += ["--overwrite_output_dir"]
        with open(run_dir / "train.log", "a", encoding="utf-8") as log:
            status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        if status != 0:
            tail = (run_dir / "train.log").read_text(encoding="utf-8")[-3000:]
            raise RuntimeError(f"training {run_dir} failed (exit status {status}); end of train.log:\n{tail}")
    return json.loads(metrics_file.read_text())


def zero_shot_run(recipe: Recipe) -> dict:
    """Test metrics of the untouched base model on the recipe's datasets (and ``evaluation.test_datasets``),
    in the shape of a training run's metrics.json."""
    import torch
    from transformers import CLIPModel

    metrics_file = Path(recipe.output_dir) / "metrics.json"
    if not metrics_file.is_file():
        model = CLIPModel.from_pretrained(recipe.base_model).requires_grad_(False)
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        processor = load_processor(recipe)
        own = load_datasets(recipe, processor.tokenizer, pos_mode=None)
        tests = {name: (splits["test"], None) for name, splits in own.items()}
        tests.update(other_test_splits(recipe, processor, pos_mode=None))
        found = {
            name: evaluate_by_ties(
                model,
                rows,
                processor,
                TIE_PROTOCOLS,
                batch_size=recipe.training.eval_batch_size,
                pixels=pixels,
            )
            for name, (rows, pixels) in tests.items()
        }
        by_ties = {p: mean_metrics([found[name][p] for name in own]) for p in TIE_PROTOCOLS}
        ties = recipe.evaluation.ties
        by_dataset = {name: by_protocol[ties] for name, by_protocol in found.items()}
        if len(by_dataset) > 1:
            by_dataset["mean"] = mean_metrics(list(by_dataset.values()))
        trainable, base = parameter_counts(model)
        cost = {
            "trainable_parameters": trainable,
            "base_parameters": base,
            "seconds_per_step": None,
            "peak_memory_mb": None,
            "memory_kind": None,
        }
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics = {**test_results(by_ties, ties), "cost": cost}
        if len(by_dataset) > 1:
            metrics["test_by_dataset"] = by_dataset
        write_json(metrics_file, metrics)
    return json.loads(metrics_file.read_text())


def mean_retention(runs: list[tuple[int, dict]]) -> float | None:
    """The mean over runs and classification datasets of the adapted model's zero-shot top-1 retention."""
    kept = [
        entry["retention_top1"]
        for _, metrics in runs
        for entry in metrics.get("zero_shot_classification", [])
        if entry.get("retention_top1") is not None
    ]
    return statistics.fmean(kept) if kept else None


def summarise(label: str, runs: list[tuple[int, dict]], ties: str | None = None) -> MethodSummary:
    """The row of ``label``: its test metrics as reported (``ties=None``) or under the tie protocol
    ``ties`` (from ``metrics.json``'s ``test_ties``)."""
    costs = [metrics["cost"] for _, metrics in runs]
    tests = [metrics["test_ties"][ties] if ties else metrics["test"] for _, metrics in runs]
    timings = [c["seconds_per_step"] for c in costs if c.get("seconds_per_step") is not None]
    memories = [c["peak_memory_mb"] for c in costs if c.get("peak_memory_mb") is not None]
    return MethodSummary(
        method=label,
        trainable_parameters=costs[0]["trainable_parameters"],
        base_parameters=costs[0]["base_parameters"],
        seeds=[seed for seed, _ in runs],
        mean={k: statistics.fmean(t[k] for t in tests) for k in METRIC_KEYS},
        std={k: statistics.stdev(t[k] for t in tests) if len(tests) > 1 else 0.0 for k in METRIC_KEYS},
        seconds_per_step=statistics.median(timings) if timings else None,
        peak_memory_mb=max(memories) if memories else None,
        memory_kind=costs[0].get("memory_kind"),
        retention=mean_retention(runs),
        dataset_mR=dataset_mR(runs),
    )


def dataset_mR(runs: list[tuple[int, dict]]) -> dict[str, tuple[float, float]]:
    """Test mR (mean, sample std over the runs) on each dataset of the runs' ``test_by_dataset`` (their own
    datasets, ``evaluation.test_datasets`` and the ``mean``), in the order the runs list them."""
    tables = [metrics.get("test_by_dataset", {}) for _, metrics in runs]
    found = {}
    for name in tables[0]:
        values = [table[name]["mR"] for table in tables if name in table]
        found[name] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return found


def results_markdown(summaries: list[MethodSummary]) -> str:
    """The results table; a ``retention`` column (zero-shot top-1 kept) when a run measured it."""
    with_retention = any(s.retention is not None for s in summaries)
    header = ["method", "trainable", "%", *METRIC_KEYS, *(["retention"] * with_retention)]
    header += ["s/step", "peak memory (MB)", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        recalls = [mean_std((s.mean[k], s.std[k])) for k in METRIC_KEYS]
        recalls[-1] = f"**{recalls[-1]}**"
        if with_retention:
            recalls.append("–" if s.retention is None else f"{s.retention:.3f}")
        timing = "–" if s.seconds_per_step is None else f"{s.seconds_per_step:.3f}"
        memory = "–" if s.peak_memory_mb is None else f"{s.peak_memory_mb:,.0f}"
        cells = [
            s.method,
            f"{s.trainable_parameters:,}",
            f"{s.trainable_percent:.2f}",
            *recalls,
            timing,
            memory,
            str(len(s.seeds)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_std(value: tuple[float, float] | None) -> str:
    return "–" if value is None else f"{value[0]:.2f} ± {value[1]:.2f}"


def datasets_markdown(summaries: list[MethodSummary]) -> str:
    """Test mR by dataset (mean ± std over seeds) of the rows whose runs scored several datasets, and their
    mean; ``""`` when no run did."""
    rows = [s for s in summaries if s.dataset_mR]
    if not rows:
        return ""
    names = [*dict.fromkeys(name for s in rows for name in s.dataset_mR if name != "mean"), "mean"]
    lines = ["| method | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    lines += [
        f"| {s.method} | " + " | ".join(mean_std(s.dataset_mR.get(n)) for n in names) + " |" for s in rows
    ]
    return "\n".join(lines) + "\n"


@dataclass
class TransferMatrix:
    """One method's test mR (mean, sample std over seeds) trained on each of ``train_sets`` (rows) and tested
    on each of ``test_sets`` (columns)."""

    method: str
    train_sets: list[str]
    test_sets: list[str]
    mean: list[list[float]]
    std: list[list[float]]


def transfer_matrices(
    summaries: list[MethodSummary], methods: list[str], datasets: list[str]
) -> list[TransferMatrix]:
    """The transfer matrix of each method of a transfer benchmark, from its rows' test mR by dataset."""
    by_row = {s.method: s for s in summaries}
    matrices = []
    for method in methods:
        cells = [
            [by_row[row_label(method, train)].dataset_mR[test] for test in datasets] for train in datasets
        ]
        mean = [[cell[0] for cell in row] for row in cells]
        std = [[cell[1] for cell in row] for row in cells]
        matrices.append(TransferMatrix(method, list(datasets), list(datasets), mean, std))
    return matrices


def transfer_markdown(matrices: list[TransferMatrix]) -> str:
    """Each method's transfer matrix as a table: rows trained on, columns tested on."""
    parts = []
    for matrix in matrices:
        lines = [
            f"{matrix.method}: test mR (mean ± std over seeds), trained on (rows) × tested on (columns)",
            "",
            "| trained on | " + " | ".join(matrix.test_sets) + " |",
            "|" + "---|" * (len(matrix.test_sets) + 1),
        ]
        for train, means, stds in zip(matrix.train_sets, matrix.mean, matrix.std, strict=True):
            cells = [mean_std(cell) for cell in zip(means, stds, strict=True)]
            lines.append(f"| {train} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def write_transfer_csv(matrices: list[TransferMatrix], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "trained_on", "tested_on", "mR_mean", "mR_std"])
        for m in matrices:
            for i, train in enumerate(m.train_sets):
                for j, test in enumerate(m.test_sets):
                    writer.writerow([m.method, train, test, f"{m.mean[i][j]:.4f}", f"{m.std[i][j]:.4f}"])


def plot_transfer(matrices: list[TransferMatrix], path: Path) -> None:
    """A heat map per method (one colour scale for all): test mR, trained on (rows) × tested on (columns)."""
    low = min(value for m in matrices for row in m.mean for value in row)
    high = max(value for m in matrices for row in m.mean for value in row)
    figure, axes = plt.subplots(1, len(matrices), figsize=(1.2 + 2.6 * len(matrices), 3.2), squeeze=False)
    for index, (axis, m) in enumerate(zip(axes[0], matrices, strict=True)):
        image = axis.imshow(m.mean, cmap="viridis", vmin=low, vmax=high)
        for i, j in ((i, j) for i in range(len(m.train_sets)) for j in range(len(m.test_sets))):
            colour = "black" if m.mean[i][j] > (low + high) / 2 else "white"
            label = f"{m.mean[i][j]:.1f}\n± {m.std[i][j]:.1f}"
            axis.text(j, i, label, ha="center", va="center", color=colour, fontsize=8)
        axis.set_xticks(range(len(m.test_sets)), m.test_sets, rotation=30)
        axis.set_yticks(range(len(m.train_sets)), m.train_sets if index == 0 else [])  # the same rows
        axis.set_xlabel("tested on")
        axis.set_title(m.method, fontsize=10)
    axes[0][0].set_ylabel("trained on")
    figure.colorbar(image, ax=axes[0].tolist(), label="test mR (%)", shrink=0.8)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def write_results_csv(summaries: list[MethodSummary], path: Path) -> None:
    columns = ["method", "trainable_parameters", "base_parameters", "trainable_percent", "seeds"]
    columns += [f"{k}_{stat}" for k in METRIC_KEYS for stat in ("mean", "std")]
    columns += ["seconds_per_step", "peak_memory_mb", "memory_kind", "zero_shot_retention"]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        for s in summaries:
            row = {
                "method": s.method,
                "trainable_parameters": s.trainable_parameters,
                "base_parameters": s.base_parameters,
                "trainable_percent": f"{s.trainable_percent:.4f}",
                "seeds": " ".join(map(str, s.seeds)),
                "seconds_per_step": s.seconds_per_step,
                "peak_memory_mb": s.peak_memory_mb,
                "memory_kind": s.memory_kind,
                "zero_shot_retention": s.retention,
            }
            for k in METRIC_KEYS:
                row[f"{k}_mean"], row[f"{k}_std"] = f"{s.mean[k]:.4f}", f"{s.std[k]:.4f}"
            writer.writerow(row)


def write_runs_csv(results: dict[str, list[tuple[int, dict]]], path: Path) -> None:
    columns = ["method", "seed", *METRIC_KEYS, "trainable_parameters", "seconds_per_step", "peak_memory_mb"]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for label, runs in results.items():
            for seed, metrics in runs:
                cost = metrics["cost"]
                writer.writerow(
                    [
                        label,
                        seed,
                        *(metrics["test"][k] for k in METRIC_KEYS),
                        cost["trainable_parameters"],
                        cost["seconds_per_step"],
                        cost["peak_memory_mb"],
                    ]
                )


def plot_mr_vs_parameters(summaries: list[MethodSummary], path: Path) -> None:
    """Test mR (mean ± std) against trainable parameters on a log axis; untrained methods as a line."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for s in summaries:
        if s.trainable_parameters == 0:
            axis.axhline(s.mean["mR"], color="grey", ls="--", lw=1)
            axis.annotate(s.method, (0.01, s.mean["mR"]), xycoords=("axes fraction", "data"), va="bottom")
            continue
        axis.errorbar(s.trainable_parameters, s.mean["mR"], yerr=s.std["mR"], fmt="o", capsize=3)
        axis.annotate(
            s.method, (s.trainable_parameters, s.mean["mR"]), textcoords="offset points", xytext=(5, 5)
        )
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (log scale)")
    axis.set_ylabel("test mR (%)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_benchmark(
    config: str | os.PathLike,
    overrides: list[str] | None = None,
    seeds: list[int] | None = None,
    methods: list[str] | None = None,
    output_dir: str | None = None,
) -> list[MethodSummary]:
    """Run (or complete) a benchmark file and write its tables and plot; returns the table's rows."""
    benchmark, shared = load_benchmark(config, overrides)
    if output_dir:
        benchmark.output_dir = output_dir
    if methods:
        unknown = sorted(set(methods) - set(benchmark.methods))
        if unknown:
            raise RecipeError(f"--methods: {unknown} not in {config} (it has {list(benchmark.methods)})")
        benchmark.methods = {label: benchmark.methods[label] for label in methods}
    seeds = seeds or benchmark.seeds
    planned = run_recipes(benchmark, shared, seeds)  # every recipe is checked before anything runs
    if benchmark.synthetic_task:
        needs_pos = any(get_method(r.method.name).pos_inputs for runs in planned.values() for _, r in runs)
        prepare_synthetic_task(Path(benchmark.synthetic_task), shared, needs_pos)
        planned = run_recipes(benchmark, shared, seeds)

    results = {}
    for label, runs in planned.items():
        results[label] = []
        for seed, recipe in runs:
            logger.info("[rsitr-petl] %s, seed %d -> %s", label, seed, recipe.output_dir)
            trained = get_method(recipe.method.name).trains
            metrics = train_run(recipe, benchmark.launcher) if trained else zero_shot_run(recipe)
            results[label].append((seed, metrics))

    summaries = [summarise(label, runs) for label, runs in results.items()]
    output = Path(benchmark.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    table = results_markdown(summaries)
    transfer = list(transfer_sets(benchmark))
    if transfer:  # each method trained on each dataset, tested on all
        matrices = transfer_matrices(summaries, list(benchmark.methods), transfer)
        table += "\ntransfer matrices:\n\n" + transfer_markdown(matrices)
        write_transfer_csv(matrices, output / "transfer.csv")
        plot_transfer(matrices, output / "transfer_matrix.png")
    elif by_dataset := datasets_markdown(summaries):  # runs on several datasets, or tested on others
        table += "\ntest mR by dataset (mean ± std over seeds):\n\n" + by_dataset
    (output / "results.md").write_text(table, encoding="utf-8")
    # the papers' tie handling beside it: on data with shared captions (UCM) the two differ
    older = [label for label, runs in results.items() if any("test_ties" not in m for _, m in runs)]
    if older:  # runs finished before rsitr_hf recorded test_ties: their test split was scored one way only
        logger.warning("no results_reference_ties.md: runs of %s predate test_ties in metrics.json", older)
    else:
        reference = results_markdown([summarise(label, runs, "reference") for label, runs in results.items()])
        (output / "results_reference_ties.md").write_text(reference, encoding="utf-8")
        if reference != results_markdown(summaries):
            table += "\nwith the papers' tie handling (evaluation.ties: reference):\n\n" + reference
    write_results_csv(summaries, output / "results.csv")
    write_runs_csv(results, output / "runs.csv")
    plot_mr_vs_parameters(summaries, output / "mr_vs_trainable_parameters.png")
    print(table)
    print(f"tables and plot in {output}")
    return summaries


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        __doc__,
        usage="%(prog)s --config BENCHMARK [--seeds N ...] [--methods NAME ...] [--output_dir DIR] "
        "[--section.field VALUE ...]",
    )
    parser.add_argument("--config", required=True, help="benchmark file (see benchmarks/petl_*.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", help="instead of the file's seeds")
    parser.add_argument("--methods", nargs="+", help="a subset of the file's methods")
    parser.add_argument("--output_dir", help="instead of the file's output_dir")
    recipe_options = add_recipe_arguments(parser, exclude=("output_dir",))
    args = parse_arguments(parser, argv)
    overrides = recipe_overrides(args, recipe_options)
    run_benchmark(args.config, overrides, args.seeds, args.methods, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
