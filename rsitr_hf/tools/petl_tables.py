"""The tables and plots of a PETL benchmark (``rsitr-petl``): the results table (mean ± std over seeds), test
mR by dataset, the transfer matrices, their CSV files, and mR against trainable parameters."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..evaluation import METRIC_KEYS
from ..utils.files import atomic_output
from ..utils.plotting import plt, save_figure


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


def row_label(method: str, train_set: str | None) -> str:
    """A row of the results: the method's label, and in a transfer benchmark the dataset it trained on."""
    return method if train_set is None else f"{method} @ {train_set}"


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
    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
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
    save_figure(figure, path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def write_results_csv(summaries: list[MethodSummary], path: Path) -> None:
    columns = ["method", "trainable_parameters", "base_parameters", "trainable_percent", "seeds"]
    columns += [f"{k}_{stat}" for k in METRIC_KEYS for stat in ("mean", "std")]
    columns += ["seconds_per_step", "peak_memory_mb", "memory_kind", "zero_shot_retention"]
    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
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
    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
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
    save_figure(figure, path, dpi=120)
    plt.close(figure)
