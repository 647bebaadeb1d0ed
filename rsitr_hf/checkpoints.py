"""Crash-safe files of a training run: checkpoints, the best adapter, the outputs.

A checkpoint is written into ``checkpoints/step_N.partial`` and renamed to ``checkpoints/step_N`` once every
file is in, the last of them ``checkpoint.json``: the run it belongs to, its step, and every file with its
size. A folder without that manifest, or whose files differ from it, is not a checkpoint: ``latest`` skips it
and naming it is a :class:`~rsitr_hf.errors.CheckpointError`. Folders that replace others (``best_adapter/``,
``adapter/``) are written beside their target, checked, then swapped in with two renames, so the old copy is
deleted only once the new one is complete. Nothing here unpickles: the manifest and the trainer state are
JSON, weights are safetensors, and Accelerate loads the optimiser and RNG states with ``weights_only``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open

from .errors import CheckpointError, first_line
from .files import install_folder, write_json

MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.json"
PARTIAL_SUFFIX = ".partial"
RUN_OUTPUTS = ("recipe.yaml", "metrics.json", "adapter", "best_adapter", "checkpoints")

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: damaged ({error}); {what}") from None


# --- Folders replaced whole -------------------------------------------------------------------------------


def check_weights(folder: Path) -> None:
    """Every ``*.safetensors`` in ``folder`` opens and lists its tensors; there is at least one."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no .safetensors weights")
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as weights:
                weights.keys()
        except Exception as error:  # safetensors raises its own error types for damaged headers
            raise CheckpointError(f"{file}: not readable safetensors ({error})") from None


def replace_folder(target: Path, write: Callable[[Path], None]) -> None:
    """Write a new version of ``target`` with ``write(folder)`` beside it, check its weights, swap it in."""
    staged = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
    if staged.exists():
        shutil.rmtree(staged)
    write(staged)
    check_weights(staged)
    install_folder(staged, target)


# --- Checkpoints ------------------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def partial_folder(checkpoints_dir: Path, step: int) -> Path:
    return checkpoints_dir / f"{checkpoint_name(step)}{PARTIAL_SUFFIX}"


def seal_checkpoint(partial: Path, run_id: str, step: int, num_processes: int) -> Path:
    """Record every file of the finished ``partial`` folder in its manifest and rename it into place."""
    files = {
        path.relative_to(partial).as_posix(): path.stat().st_size
        for path in sorted(partial.rglob("*"))
        if path.is_file()
    }
    manifest = {
        "run_id": run_id,
        "step": step,
        "num_processes": num_processes,
        "written_at": time.time(),
        "files": files,
    }
    write_json(partial / MANIFEST, manifest)
    final = partial.with_name(checkpoint_name(step))
    install_folder(partial, final)  # a step_N of an earlier attempt is replaced, deleted last
    return final


def read_manifest(folder: Path) -> dict:
    return read_json(
        folder / MANIFEST,
        "the checkpoint was not completely written (interrupted); resume from an earlier one",
    )


def verify_checkpoint(folder: Path, num_processes: int) -> dict:
    """The manifest of ``folder`` once every file it lists is there with its size, including one RNG
    state per process; else a :class:`CheckpointError` naming what is missing or different."""
    if not folder.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint: {folder} is not a folder")
    manifest = read_manifest(folder)
    for name, size in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: {name} is missing; the checkpoint cannot be resumed exactly")
        if path.stat().st_size != size:
            raise CheckpointError(
                f"{folder}: {name} has {path.stat().st_size} bytes, the manifest says {size}; it is damaged"
            )
        if name.endswith((".bin", ".pkl", ".pt")):
            check_tensor_file(path)
    if manifest["num_processes"] != num_processes:
        raise CheckpointError(
            f"{folder} was written by {manifest['num_processes']} process(es) and this run has "
            f"{num_processes}: the data order and RNG states would not continue; launch as many processes"
        )
    return manifest


def check_tensor_file(path: Path) -> None:
    """``path`` loads with ``torch.load(weights_only=True)`` (tensors, numbers and containers only, as
    Accelerate loads the optimiser and RNG states): a crafted pickle is refused, never run."""
    from accelerate.utils import load

    try:
        load(path, map_location="cpu")
    except Exception as error:  # UnpicklingError for forbidden globals, others for damaged files
        raise CheckpointError(
            f"{path}: not a weights-only torch file, refused ({first_line(error)})"
        ) from None


def complete_checkpoints(checkpoints_dir: Path) -> list[tuple[Path, dict]]:
    """The complete checkpoints in ``checkpoints_dir`` with their manifests, oldest first (by the time
    they were written); incomplete ones are skipped with a warning."""
    found = []
    for folder in sorted(checkpoints_dir.glob("step_*")):
        if folder.name.endswith(PARTIAL_SUFFIX) or not folder.is_dir():
            continue
        try:
            found.append((folder, read_manifest(folder)))
        except CheckpointError as error:
            logger.warning("skipping %s: %s", folder, error)
    return sorted(found, key=lambda item: (item[1]["written_at"], item[1]["step"]))


def latest_checkpoint(checkpoints_dir: Path) -> Path:
    checkpoints = complete_checkpoints(checkpoints_dir)
    if not checkpoints:
        raise CheckpointError(f"--resume_from_checkpoint latest: no complete checkpoint in {checkpoints_dir}")
    return checkpoints[-1][0]


def prune_checkpoints(checkpoints_dir: Path, run_id: str, keep: int) -> None:
    """Delete this run's checkpoints but the newest ``keep``; other runs' folders are left alone."""
    own = [
        folder for folder, manifest in complete_checkpoints(checkpoints_dir) if manifest["run_id"] == run_id
    ]
    for folder in own[:-keep]:
        shutil.rmtree(folder)


# --- The output folder ------------------------------------------------------------------------------------


def previous_outputs(output_dir: Path) -> list[str]:
    return [name for name in RUN_OUTPUTS if (output_dir / name).exists()]


def claim_output_dir(output_dir: Path, resuming: bool, overwrite: bool, main_process: bool = True) -> None:
    """Refuse to start a new run over a previous run's outputs unless resuming it, or asked to overwrite
    (then the main process deletes them first, so the two runs never mix)."""
    found = previous_outputs(output_dir)
    if not found or resuming:
        return
    if not overwrite:
        raise CheckpointError(
            f"output_dir {output_dir} holds a previous run ({', '.join(found)}): resume it with "
            "--resume_from_checkpoint latest, replace it with --overwrite_output_dir, or choose another "
            "output_dir"
        )
    if not main_process:
        return
    logger.warning(
        "--overwrite_output_dir: deleting the previous run's %s in %s", ", ".join(found), output_dir
    )
    for name in found:
        path = output_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
