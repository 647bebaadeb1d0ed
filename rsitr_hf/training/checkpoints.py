"""Checkpoints of a training run: what a resumed run needs, written so that a crash never leaves half of it.

A checkpoint ``checkpoints/step_N`` holds Accelerate's ``save_state`` (the adapter only, never the frozen
backbone; the optimiser, schedule, sampler and RNG states), the progress as JSON (``trainer_state.json``) and
the best adapter so far. It is written into ``checkpoints/step_N.partial`` and renamed once every file is
in, the last of them ``checkpoint.json``: the run it belongs to, its step, and every file with its size. A
folder without that manifest, or whose files differ from it, is not a checkpoint: ``latest`` skips it and
naming it is a :class:`~rsitr_hf.utils.errors.CheckpointError`. Folders that replace others
(``best_adapter/``, ``adapter/``) are written beside their target, checked, then swapped in with two renames,
so the old copy is deleted only once the new one is complete. Nothing here unpickles: the manifest and the
trainer state are JSON, weights are safetensors, and Accelerate loads the optimiser, schedule and RNG states
with ``weights_only``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import SCHEDULER_NAME
from peft import PeftModel, set_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors import safe_open
from transformers import CLIPModel

from ..utils.errors import CheckpointError, first_line
from ..utils.files import install_folder, write_json

MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.json"
PARTIAL_SUFFIX = ".partial"
RUN_OUTPUTS = ("recipe.yaml", "metrics.json", "adapter", "best_adapter", "checkpoints")

logger = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """Progress saved in every checkpoint so that a resumed run continues exactly where it stopped."""

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    best_mR: float | None = None  # None without a validation split (the latest adapter is kept)
    best_step: int = -1
    evaluations: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    @property
    def at_start(self) -> bool:
        """Nothing trained yet (a fresh run, or one resumed from a checkpoint of step 0)."""
        return self.global_step == 0 and self.epoch == 0 and self.batches_done_in_epoch == 0


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
    if f"{SCHEDULER_NAME}.bin" not in manifest["files"]:  # rsitr_hf 0.1 kept it in trainer_state.json
        raise CheckpointError(
            f"{folder}: no {SCHEDULER_NAME}.bin (a checkpoint of rsitr_hf 0.1, which rsitr_hf 0.2 does not "
            "resume); start the run again"
        )
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


# --- Saving and resuming a run through Accelerate -----------------------------------------------------


def keep_adapter_only(accelerator: Accelerator, model) -> None:
    """Make ``save_state``/``load_state`` store a PEFT model's adapter only, never the frozen backbone (a
    model without an adapter is saved whole, as Accelerate does)."""
    if not isinstance(model, PeftModel):
        return

    def save_adapter_only(models, weights, checkpoint_dir):
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(models[0], keep_torch_compile=False)
            unwrapped.save_pretrained(Path(checkpoint_dir) / "adapter")
        weights.clear()

    def load_adapter_only(models, checkpoint_dir):
        peft_model = accelerator.unwrap_model(models.pop(), keep_torch_compile=False)
        weights = load_peft_weights(str(Path(checkpoint_dir) / "adapter"), device="cpu")
        set_peft_model_state_dict(peft_model, weights)

    accelerator.register_save_state_pre_hook(save_adapter_only)
    accelerator.register_load_state_pre_hook(load_adapter_only)


def save_best(model, output_dir: Path) -> None:
    """The current adapter (or model) as ``best_adapter/``, written beside it and swapped in once whole."""
    replace_folder(output_dir / "best_adapter", model.save_pretrained)


def load_best(model, output_dir: Path) -> None:
    """Load ``best_adapter/`` into ``model`` (its adapter, or its whole weights without one)."""
    best_dir = output_dir / "best_adapter"
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_peft_weights(str(best_dir), device="cpu"))
    else:
        model.load_state_dict(CLIPModel.from_pretrained(best_dir).state_dict())


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, state: TrainerState, run_id: str, keep: int | None
) -> None:
    """A resumable checkpoint ``checkpoints/step_N``: Accelerate's ``save_state``, the trainer state as JSON
    and the best adapter so far, written as ``step_N.partial`` and renamed once complete; this run's
    checkpoints beyond the newest ``keep`` are deleted."""
    checkpoints_dir = output_dir / "checkpoints"
    partial = partial_folder(checkpoints_dir, state.global_step)
    if accelerator.is_main_process and partial.exists():  # left by an interrupted write
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(partial / TRAINER_STATE, {"trainer": state.state_dict()})
        shutil.copytree(output_dir / "best_adapter", partial / "best_adapter")
        seal_checkpoint(partial, run_id, state.global_step, accelerator.num_processes)
        if keep:
            prune_checkpoints(checkpoints_dir, run_id, keep)
    accelerator.wait_for_everyone()


def resume(accelerator: Accelerator, state: TrainerState, checkpoint: str, output_dir: Path) -> str:
    """Restore an interrupted run from ``checkpoint`` (``latest``: the newest complete one, or a folder), once
    every file its manifest lists is there: adapter, optimiser, schedule, RNG states, progress and the best
    adapter so far. Returns the checkpoint's run id, which the resumed run keeps."""
    folder = latest_checkpoint(output_dir / "checkpoints") if checkpoint == "latest" else Path(checkpoint)
    manifest = verify_checkpoint(folder, accelerator.num_processes)
    trainer_state = read_json(folder / TRAINER_STATE, "the checkpoint cannot be resumed")
    accelerator.load_state(str(folder))
    state.load_state_dict(trainer_state["trainer"])
    if accelerator.is_main_process:
        replace_folder(
            output_dir / "best_adapter", lambda staged: shutil.copytree(folder / "best_adapter", staged)
        )
    accelerator.wait_for_everyone()
    logger.info(f"resumed from {folder} at step {state.global_step}, epoch {state.epoch}")
    return manifest["run_id"]
