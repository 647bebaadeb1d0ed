"""Training plots written at the end of a run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from ..evaluation import METRIC_KEYS
from ..utils.plotting import plt, save_figure

RECALLS = tuple(key for key in METRIC_KEYS if key != "mR")


def plot_training_curve(train_loss: list[dict], evaluations: list[dict], path: Path) -> None:
    """Training loss per optimiser step (left axis) and validation mR (right axis)."""
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    if train_loss:
        loss_axis.plot(
            [p["step"] for p in train_loss], [p["loss"] for p in train_loss], color="tab:blue", lw=1
        )
    loss_axis.set_xlabel("optimiser step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    validation = [e for e in evaluations if e["split"] == "validation" and "mR" in e]
    if validation:
        mr_axis = loss_axis.twinx()
        mr_axis.plot([e["step"] for e in validation], [e["mR"] for e in validation], "o-", color="tab:red")
        mr_axis.set_ylabel("validation mR (%)", color="tab:red")
    figure.tight_layout()
    save_figure(figure, path, dpi=120)
    plt.close(figure)


def plot_recalls(evaluations: list[dict], path: Path) -> None:
    """Validation R@1/5/10 in both directions per evaluation step, and the test recalls as stars."""
    figure, axis = plt.subplots(figsize=(7, 4))
    validation = [e for e in evaluations if e["split"] == "validation" and "mR" in e]
    test = [e for e in evaluations if e["split"] == "test"]
    for index, key in enumerate(RECALLS):
        colour = f"C{index}"
        axis.plot([e["step"] for e in validation], [e[key] for e in validation], "-", color=colour, label=key)
        for result in test:
            axis.plot([result["step"]], [result[key]], "*", color=colour, markersize=11)
    axis.set_xlabel("optimiser step (stars: test, at the selected step)")
    axis.set_ylabel("recall (%)")
    axis.legend(ncol=2, fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)
    plt.close(figure)
