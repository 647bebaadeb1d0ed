"""The PETL comparison harness behind ``rsitr-petl`` (:mod:`rsitr_hf.tools.petl`, whose docstring says what a
benchmark file holds): plan every (method, seed) run of a benchmark file, train each in its own process (or
score the zero-shot base), summarise the runs, and write the tables and plots (:mod:`.petl_tables`)."""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..data.seed_layout import RSITRDataError, infer_name
from ..data.text_inputs import get_text_inputs
from ..demo.task import prepare_demo_task
from ..evaluation import METRIC_KEYS, score_tests
from ..evaluation.inference import RetrievalModel
from ..training import load_datasets, parameter_counts
from ..training.checkpoints import complete_checkpoints
from ..training.data import load_processor, other_test_splits
from ..training.recipe import Recipe, RecipeError, save_recipe
from ..tuners.methods import get_method
from ..utils.config import build, read_mapping, set_value
from ..utils.files import write_json, write_text
from .petl_tables import (
    MethodSummary,
    datasets_markdown,
    plot_mr_vs_parameters,
    plot_transfer,
    results_markdown,
    row_label,
    transfer_markdown,
    transfer_matrices,
    write_results_csv,
    write_runs_csv,
    write_transfer_csv,
)

logger = logging.getLogger(__name__)


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


def merge_sections(shared: dict, partial: dict) -> dict:
    """``shared`` with ``partial`` merged in; ``partial["method"]`` replaces the method section whole."""
    merged = dict(shared)
    for key, value in partial.items():
        if key != "method" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_partial(shared: dict, partial: dict) -> dict:
    """A method's recipe: ``shared`` with ``partial`` merged in (:func:`merge_sections`), except the sections
    whose options another choice declares, which start from ``partial`` alone when the choice changes: the
    ``loss`` section when the run trains with another loss than the shared recipe, the ``text`` section when
    its method takes another kind of text inputs."""
    merged = merge_sections(shared, partial)
    before, after = choices_of(shared), choices_of(merged)
    for section, changed in (("loss", before[0] != after[0]), ("text", before[1] != after[1])):
        if changed:
            merged[section] = dict(partial.get(section, {}))
    return merged


def choices_of(values: dict) -> tuple[str | None, str | None]:
    """``(loss, kind of text inputs)`` of a recipe mapping (its method's defaults where unset)."""
    try:
        method = get_method(values.get("method", {}).get("name", "mrs_adapter"))
    except ValueError:  # an unknown method: the recipe check names it
        return None, None
    return values.get("loss", {}).get("name") or method.losses[0], method.text_inputs


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
    benchmark: PETLBenchmark, shared: dict, seeds: list[int], text_options: dict[str, dict] | None = None
) -> dict[str, list[tuple[int, Recipe]]]:
    """``{row: [(seed, recipe), ...]}`` (rows: :func:`row_label`), every recipe validated before anything
    runs; a method that is not trained gets one recipe (seed of the first seed). ``text_options``: options of
    the ``text`` section by kind of text inputs, under what the method's entry sets (the offline task's)."""
    runs = {}
    output_dir = Path(benchmark.output_dir)
    for label, partial in benchmark.methods.items():
        if not isinstance(partial, dict):
            raise RecipeError(f"methods.{label}: expected a partial recipe (a mapping), got {partial!r}")
        method_values = merge_partial(shared, partial)
        offline = (text_options or {}).get(choices_of(method_values)[1], {})
        method_values["text"] = {**offline, **method_values.get("text", {})}
        for train_set, values in training_sets(benchmark, method_values):
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


def prepare_synthetic_task(folder: Path, shared: dict, planned: dict) -> dict[str, dict]:
    """Point ``shared`` at the synthetic transfer task of ``rsitr-demo`` prepared in ``folder``, and return
    the options each kind of text inputs of the ``planned`` runs needs to run offline (POSAPL's: a small
    tagger trained in ``folder``), by kind."""
    base, target = prepare_demo_task(folder)
    shared["base_model"], shared.setdefault("data", {})["path"] = str(base), str(target)
    kinds = {get_method(recipe.method.name).text_inputs for runs in planned.values() for _, recipe in runs}
    offline = {kind: get_text_inputs(kind).offline_options(folder) for kind in sorted(kinds)}
    for kind, options in offline.items():
        if options:
            logger.info("[rsitr-petl] text inputs %s run offline with %s", kind, options)
    return offline


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
    metrics_file = Path(recipe.output_dir) / "metrics.json"
    if not metrics_file.is_file():
        model = RetrievalModel(recipe.base_model).model
        processor = load_processor(recipe)
        own = {name: (splits["test"], None) for name, splits in load_datasets(recipe).items()}
        tests = {**own, **other_test_splits(recipe, processor)}
        tested = score_tests(
            model,
            tests,
            list(own),
            processor,
            recipe.evaluation.ties,
            batch_size=recipe.training.eval_batch_size,
        )
        trainable, base = parameter_counts(model)
        cost = {
            "trainable_parameters": trainable,
            "base_parameters": base,
            "seconds_per_step": None,
            "peak_memory_mb": None,
            "memory_kind": None,
        }
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(metrics_file, {**tested.results(), "cost": cost})
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
        offline = prepare_synthetic_task(Path(benchmark.synthetic_task), shared, planned)
        planned = run_recipes(benchmark, shared, seeds, offline)

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
    write_text(output / "results.md", table)
    # the papers' tie handling beside it: on data with shared captions (UCM) the two differ
    older = [label for label, runs in results.items() if any("test_ties" not in m for _, m in runs)]
    if older:  # runs finished before rsitr_hf recorded test_ties: their test split was scored one way only
        logger.warning("no results_reference_ties.md: runs of %s predate test_ties in metrics.json", older)
    else:
        reference = results_markdown([summarise(label, runs, "reference") for label, runs in results.items()])
        write_text(output / "results_reference_ties.md", reference)
        if reference != results_markdown(summaries):
            table += "\nwith the papers' tie handling (evaluation.ties: reference):\n\n" + reference
    write_results_csv(summaries, output / "results.csv")
    write_runs_csv(results, output / "runs.csv")
    plot_mr_vs_parameters(summaries, output / "mr_vs_trainable_parameters.png")
    print(table)
    print(f"tables and plot in {output}")
    return summaries
