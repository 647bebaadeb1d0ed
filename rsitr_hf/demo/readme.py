"""Keeping the README's demo table equal to what ``rsitr-demo`` prints.

The demo's figures are deterministic on one machine, but not across machines: the CPU's instruction set
and the number of torch threads decide how float32 sums are ordered in the matrix kernels, and three epochs
of pretraining plus the adapter's training amplify those last-bit differences into other rankings. So the
README records the machine its table came from (``Figures of: ...``). After a run with the README's
settings, the demo compares: equal figures pass; different figures on the same kind of machine mean the
README is stale, and the demo fails loudly; on another kind of machine it says so and how far apart the
figures are. ``rsitr-demo --update_readme`` rewrites the table and the machine line from the run.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

from ..evaluation import METRIC_KEYS
from ..utils.files import write_text

README_ROWS = {"zero-shot": "zero-shot (source-pretrained base)", "adapted": "MRS-Adapter + HMMC",
               "reloaded": "reloaded with `PeftModel.from_pretrained`"}  # fmt: skip
MACHINE_LINE = re.compile(r"^Figures of: `(?P<machine>[^`]*)`", re.M)


class StaleReadme(RuntimeError):
    """The demo printed other figures than the README's, on the kind of machine the README's came from."""


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags from ``/proc/cpuinfo`` (``("", set())`` where there is none)."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "")
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if "flags" in line), []))
    return model, flags


def this_machine() -> str:
    """The CPU model, the vector instructions that change float32 kernels, torch's threads and version."""
    model, flags = cpu_model_and_flags()
    isa = next((name for flag, name in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
                if flag in flags), "no AVX2")  # fmt: skip
    return (
        f"{model or platform.processor() or 'unknown CPU'}, {isa}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )


def readme_figures(readme: str) -> dict[str, list[str]]:
    """The demo table's cells (as printed, two decimals) by row: ``{"zero-shot": ["1.00", ...], ...}``."""
    figures = {}
    for key, label in README_ROWS.items():
        match = re.search(rf"^\| {re.escape(label)} \|(.*)\|$", readme, re.M)
        if match:
            figures[key] = [cell.strip().strip("*") for cell in match.group(1).split("|")]
    return figures


def printed_figures(rows: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    return {key: [f"{rows[key][metric]:.2f}" for metric in METRIC_KEYS] for key in README_ROWS}


def check_readme(rows: dict[str, dict[str, float]], readme_path: str | os.PathLike) -> str:
    """Compare this run with the README's table; returns what to tell the user, raises :class:`StaleReadme`
    when the README is stale for this kind of machine."""
    readme = Path(readme_path).read_text(encoding="utf-8")
    recorded, machine = readme_figures(readme), MACHINE_LINE.search(readme)
    if set(recorded) != set(README_ROWS) or machine is None:
        return f"{readme_path} has no demo table with a 'Figures of:' line to compare with"
    printed = printed_figures(rows)
    if printed == recorded:
        return f"the figures equal {readme_path}'s table"
    difference = f"adapted mR {printed['adapted'][-1]} here, {recorded['adapted'][-1]} in {readme_path}"
    if machine.group("machine") == this_machine():
        raise StaleReadme(
            f"{readme_path}'s demo table is stale: {difference}, on the same kind of machine "
            f"({this_machine()}); run `rsitr-demo --update_readme` and commit the table"
        )
    return (
        f"the figures differ from {readme_path}'s table ({difference}), which came from "
        f"'{machine.group('machine')}'; this machine is '{this_machine()}', and float32 rounding differs "
        "between CPUs and thread counts"
    )


def update_readme(rows: dict[str, dict[str, float]], readme_path: str | os.PathLike) -> None:
    """Write this run's figures and machine into the README's demo table."""
    path = Path(readme_path)
    readme = path.read_text(encoding="utf-8")
    for key, cells in printed_figures(rows).items():
        shown = [*cells[:-1], f"**{cells[-1]}**" if key != "reloaded" else cells[-1]]
        row = f"| {README_ROWS[key]} | {' | '.join(shown)} |"
        pattern = re.compile(rf"^\| {re.escape(README_ROWS[key])} \|.*\|$", re.M)
        readme, count = pattern.subn(lambda _, row=row: row, readme)
        if count != 1:
            raise ValueError(f"{path}: no demo table row '{README_ROWS[key]}' to update")
    readme, count = MACHINE_LINE.subn(lambda _: f"Figures of: `{this_machine()}`", readme)
    if count != 1:
        raise ValueError(f"{path}: no 'Figures of: `...`' line to update")
    write_text(path, readme)
