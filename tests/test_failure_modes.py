"""Issue 14: nothing lost, nothing executed, no tracebacks.

Bad inputs give one line on stderr and exit status 2; checkpoints, the best adapter and the search index
survive an interruption between any two of their write steps; no file is unpickled beyond weights.
"""

import errno
import json
import os
import pickle
import shutil
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_one_line_error, copy_test_images, write_recipe
from filelock import FileLock
from safetensors.torch import load_file

import rsitr_hf.training.checkpoints
from rsitr_hf.data import load_rsitr
from rsitr_hf.data.seed_layout import RSITRDataError
from rsitr_hf.search import ImageIndex, RetrievalModel, SearchError, build_index, search_images
from rsitr_hf.search import main as search_main
from rsitr_hf.search.visualize import main as visualize_main
from rsitr_hf.tools.convert import main as convert_main
from rsitr_hf.tools.validate import main as validate_main
from rsitr_hf.training import main as train_main
from rsitr_hf.training import train
from rsitr_hf.training.checkpoints import (
    MANIFEST,
    complete_checkpoints,
    latest_checkpoint,
    prune_checkpoints,
    replace_folder,
    seal_checkpoint,
)
from rsitr_hf.training.recipe import load_recipe
from rsitr_hf.utils.errors import AdapterFileError, CheckpointError
from rsitr_hf.utils.files import FileFingerprint


class Canary:
    """A pickle that creates ``path`` when unpickled: what a crafted checkpoint file would do."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def dataset_copy(tmp_path, synthetic_dir) -> Path:
    copy = tmp_path / "data" / synthetic_dir.name
    shutil.copytree(synthetic_dir, copy)
    return copy


# --- Errors at the door --------------------------------------------------------------------------------


def break_count(data: Path) -> None:
    with open(data / "train_caps.txt", "a") as file:
        file.write("one caption too many\n")


def break_missing(data: Path) -> None:
    (data / "synthrs_images" / "train_00003.tif").unlink()


def break_empty_caption(data: Path) -> None:
    lines = (data / "train_caps.txt").read_text().splitlines()
    lines[2] = ""
    (data / "train_caps.txt").write_text("\n".join(lines) + "\n")


def break_utf8(data: Path) -> None:
    raw = (data / "train_caps.txt").read_bytes().split(b"\n")
    raw[6] = raw[6][:4] + b"\xff" + raw[6][5:]
    (data / "train_caps.txt").write_bytes(b"\n".join(raw))


def break_trailing_blank(data: Path) -> None:
    with open(data / "train_caps.txt", "a") as file:
        file.write("\n")


def break_duplicate(data: Path) -> None:
    lines = (data / "train_filename.txt").read_text().splitlines()
    lines[4] = lines[1]
    (data / "train_filename.txt").write_text("\n".join(lines) + "\n")


def break_truncated_image(data: Path) -> None:
    path = data / "synthrs_images" / "train_00002.tif"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DATASET_DEFECTS = {
    "count": (break_count, ["train_caps.txt", "151 captions, which is not a multiple of 5"]),
    "missing": (break_missing, ["train_00003.tif: image file is missing", "train_filename.txt, line 4"]),
    "empty_caption": (break_empty_caption, ["train_caps.txt, line 3: empty caption"]),
    "utf8": (break_utf8, ["train_caps.txt, line 7: is not UTF-8: byte 0xff at byte 5 of the line"]),
    "trailing_blank": (break_trailing_blank, ["train_caps.txt, line 151: blank line at the end"]),
    "duplicate": (
        break_duplicate,
        ["train_filename.txt, line 5: file name 'train_00001.tif' is listed twice"],
    ),
}


@pytest.mark.parametrize("defect", sorted(DATASET_DEFECTS))
def test_dataset_defects_are_one_line_naming_file_and_line(
    defect, dataset_copy, tiny_clip_dir, tmp_path, capsys
):
    breaks, expected = DATASET_DEFECTS[defect]
    breaks(dataset_copy)
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, dataset_copy, tmp_path / "out")
    assert_one_line_error(capsys, train_main(["--config", str(recipe)]), *expected)
    assert validate_main([str(dataset_copy), "--headers_only"]) == 1  # rsitr-validate lists it too
    assert any(text in capsys.readouterr().out for text in expected)


def test_duplicate_names_across_splits_name_both_files(dataset_copy):
    lines = (dataset_copy / "test_filename.txt").read_text().splitlines()
    lines[:5] = ["train_00000.tif"] * 5
    (dataset_copy / "test_filename.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        RSITRDataError, match=r"test_filename.txt, line 1: .*also on line 1 of train_filename"
    ):
        load_rsitr(dataset_copy)


@pytest.mark.parametrize("cache_images", ["true", "false"])
def test_an_undecodable_image_is_named_with_its_split(
    cache_images, dataset_copy, tiny_clip_dir, tmp_path, capsys
):
    break_truncated_image(dataset_copy)
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, dataset_copy, tmp_path / "out")
    status = train_main(
        ["--config", str(recipe), "--data.cache_images", cache_images, "--data.image_cache", str(tmp_path)]
    )
    last = assert_one_line_error(capsys, status, "train_00002.tif cannot be decoded")
    assert "train split: image" in last or "validation split: image" in last


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--optimizer.lr", "-1"], "optimizer.lr: expected a value > 0, got -1.0"),
        (["--training.batch_size", "0"], "training.batch_size: expected a value >= 1, got 0"),
        (
            ["--training.gradient_accumulation_steps", "0"],
            "gradient_accumulation_steps: expected a value >= 1",
        ),
        (
            ["--data.validation_fraction", "1.5"],
            "data.validation_fraction: expected a value in [0, 1), got 1.5",
        ),
        (["--base_model", "/no/such/model"], "base_model: there is no folder /no/such/model"),
    ],
)
def test_recipe_values_out_of_range_are_one_line(
    override, expected, tiny_clip_dir, synthetic_dir, tmp_path, capsys
):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out")
    assert_one_line_error(capsys, train_main(["--config", str(recipe), *override]), expected)


# --- The output folder and checkpoints -----------------------------------------------------------------


def test_a_new_run_over_a_previous_one_is_refused_or_replaces_it_whole(
    tiny_clip_dir, synthetic_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    (out / "checkpoints" / "step_00000099").mkdir(parents=True)
    (out / "metrics.json").write_text('{"previous": true}')
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, out, epochs=1, max_steps=2)
    assert_one_line_error(
        capsys,
        train_main(["--config", str(recipe)]),
        f"output_dir {out} holds a previous run",
        "--overwrite_output_dir",
    )
    assert json.loads((out / "metrics.json").read_text()) == {"previous": True}  # untouched
    assert train_main(["--config", str(recipe), "--overwrite_output_dir"]) == 0
    assert "previous" not in json.loads((out / "metrics.json").read_text())
    assert [folder.name for folder in (out / "checkpoints").iterdir()] == ["step_00000002"]


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, tiny_clip_dir, synthetic_dir):
    """Six steps with a checkpoint every two (all kept): the reference the interrupted runs must match."""
    root = tmp_path_factory.mktemp("checkpointed")
    recipe = write_recipe(
        root / "recipe.yaml", tiny_clip_dir, synthetic_dir, root / "out",
        epochs=1, max_steps=6, checkpoint_every_steps=2, checkpoints_total_limit=None, eval_every_steps=2,
    )  # fmt: skip
    train(load_recipe(recipe))
    return recipe, root / "out"


def final_adapter(out: Path) -> dict:
    return load_file(out / "checkpoints" / "step_00000006" / "adapter" / "adapter_model.safetensors")


def test_checkpoints_hold_no_pickle_but_weights_only_states(checkpointed_run):
    _, out = checkpointed_run
    folder = out / "checkpoints" / "step_00000004"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["step"] == 4 and manifest["num_processes"] == 1
    assert set(manifest["files"]) >= {
        "adapter/adapter_model.safetensors", "best_adapter/adapter_model.safetensors", "optimizer.bin",
        "scheduler.bin", "random_states_0.pkl", "trainer_state.json",
    }  # fmt: skip
    assert not any(name.startswith("custom_checkpoint") for name in manifest["files"])
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["trainer"]["global_step"] == 4
    assert (
        torch.load(folder / "scheduler.bin", weights_only=True)["last_epoch"] == 4
    )  # Accelerate's, prepared


def test_a_kill_while_writing_a_checkpoint_resumes_from_the_last_complete_one(
    checkpointed_run, tmp_path, monkeypatch
):
    recipe, reference = checkpointed_run
    out = tmp_path / "out"
    real_seal, sealed = rsitr_hf.training.checkpoints.seal_checkpoint, []

    def killed_at_step_4(partial, run_id, step, num_processes):
        if step == 4:
            raise KeyboardInterrupt  # everything of step 4 is written but its manifest and the rename
        sealed.append(step)
        return real_seal(partial, run_id, step, num_processes)

    monkeypatch.setattr(rsitr_hf.training.checkpoints, "seal_checkpoint", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(recipe, {"output_dir": str(out)}))
    assert sealed == [2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000002",
        "step_00000004.partial",
    ]
    monkeypatch.setattr(rsitr_hf.training.checkpoints, "seal_checkpoint", real_seal)
    # a folder named like a checkpoint but without its manifest (an older kill) is skipped as well
    shutil.copytree(out / "checkpoints" / "step_00000004.partial", out / "checkpoints" / "step_00000005")
    assert latest_checkpoint(out / "checkpoints").name == "step_00000002"

    train(load_recipe(recipe, {"output_dir": str(out)}), resume_from_checkpoint="latest")
    resumed, expected = final_adapter(out), final_adapter(reference)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=1e-5, atol=1e-6)


def test_a_checkpoint_of_rsitr_hf_0_1_is_refused_naming_what_it_lacks(checkpointed_run, tmp_path):
    """rsitr_hf 0.1 kept the schedule in ``trainer_state.json`` (its scheduler was not Accelerate's); 0.2
    refuses such a checkpoint in one line instead of resuming it with a schedule it cannot read."""
    recipe, reference = checkpointed_run
    out = tmp_path / "out"
    partial = out / "checkpoints" / "step_00000004.partial"
    shutil.copytree(reference / "checkpoints" / "step_00000004", partial)
    manifest = json.loads((partial / MANIFEST).read_text())
    for name in ("scheduler.bin", MANIFEST):
        (partial / name).unlink()
    legacy = seal_checkpoint(partial, manifest["run_id"], 4, 1)
    with pytest.raises(CheckpointError, match=r"no scheduler\.bin \(a checkpoint of rsitr_hf 0\.1"):
        train(load_recipe(recipe, {"output_dir": str(out)}), resume_from_checkpoint=str(legacy))


def checkpoint_copy(checkpointed_run, tmp_path) -> tuple[Path, Path, Path]:
    """``(recipe, output_dir, checkpoint)``: a copy of the reference run's output, its step-4 checkpoint."""
    recipe, reference = checkpointed_run
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    return recipe, out, out / "checkpoints" / "step_00000004"


def rewrite_manifest(checkpoint: Path) -> None:
    """Make the manifest agree with the files again, as a crafted checkpoint would."""
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    manifest["files"] = {name: (checkpoint / name).stat().st_size for name in manifest["files"]}
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))


def test_resuming_never_unpickles_a_crafted_file(checkpointed_run, tmp_path, capsys):
    recipe, out, checkpoint = checkpoint_copy(checkpointed_run, tmp_path)
    canary = tmp_path / "canary"
    # Accelerate's custom-object file of older versions: no longer read at all
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Canary(canary)))
    (checkpoint / "random_states_0.pkl").write_bytes(pickle.dumps(Canary(canary)))
    rewrite_manifest(checkpoint)
    status = train_main(
        ["--config", str(recipe), "--output_dir", str(out), "--resume_from_checkpoint", str(checkpoint)]
    )
    assert_one_line_error(capsys, status, "random_states_0.pkl: not a weights-only torch file, refused")
    assert not canary.exists()


@pytest.mark.parametrize(
    ("removed", "expected"),
    [
        ("random_states_0.pkl", "random_states_0.pkl is missing"),
        ("best_adapter/adapter_model.safetensors", "best_adapter/adapter_model.safetensors is missing"),
        (MANIFEST, "checkpoint.json: missing; the checkpoint was not completely written"),
    ],
)
def test_a_checkpoint_missing_a_file_is_refused_and_the_best_adapter_kept(
    removed, expected, checkpointed_run, tmp_path, capsys
):
    recipe, out, checkpoint = checkpoint_copy(checkpointed_run, tmp_path)
    best_before = (out / "best_adapter" / "adapter_model.safetensors").read_bytes()
    (checkpoint / removed).unlink()
    status = train_main(
        ["--config", str(recipe), "--output_dir", str(out), "--resume_from_checkpoint", str(checkpoint)]
    )
    assert_one_line_error(capsys, status, expected)
    assert (out / "best_adapter" / "adapter_model.safetensors").read_bytes() == best_before


def test_a_replaced_folder_survives_a_failed_or_empty_write(tmp_path):
    target = tmp_path / "best_adapter"
    target.mkdir()
    (target / "adapter_model.safetensors").write_bytes(b"the good one")

    def killed(folder: Path) -> None:
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_folder(target, killed)
    with pytest.raises(CheckpointError, match="no .safetensors weights"):
        replace_folder(target, lambda folder: folder.mkdir())
    assert (target / "adapter_model.safetensors").read_bytes() == b"the good one"


def test_pruning_deletes_only_this_runs_checkpoints(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for run_id, step in (("other", 1), ("mine", 2), ("mine", 3), ("other", 4), ("mine", 5)):
        partial = checkpoints / f"step_{step:08d}.partial"
        partial.mkdir(parents=True)
        (partial / "optimizer.bin").write_bytes(b"x")
        seal_checkpoint(partial, run_id, step, num_processes=1)
    prune_checkpoints(checkpoints, "mine", keep=1)
    assert [folder.name for folder, _ in complete_checkpoints(checkpoints)] == [
        "step_00000001", "step_00000004", "step_00000005",
    ]  # fmt: skip


def test_a_file_fingerprint_notices_another_size_time_or_bytes_at_its_ends(tmp_path):
    path, data = tmp_path / "scene.tif", bytearray(200_000)
    path.write_bytes(data)
    fingerprint = FileFingerprint.of(path)
    assert fingerprint.change(path) is None and FileFingerprint.of(path) == fingerprint

    def rewrite(position: int, value: int, mtime_ns: int = fingerprint.mtime_ns) -> str | None:
        data[position] = value
        path.write_bytes(data)
        os.utime(path, ns=(mtime_ns, mtime_ns))
        return fingerprint.change(path)

    assert rewrite(0, 0, fingerprint.mtime_ns + 10**9).startswith("modified ")
    assert rewrite(-1, 1) == "other bytes than when indexed, with the same size and time"  # the last 64 KiB
    assert rewrite(-1, 0) is None
    assert rewrite(100_000, 1) is None  # between its ends, with size and time kept: cheap by design
    path.write_bytes(bytes(100))
    assert fingerprint.change(path) == "100 bytes, 200,000 when indexed"
    path.unlink()
    assert fingerprint.change(path) == "the file is gone"


# --- The search index ----------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path, synthetic_dir) -> Path:
    return copy_test_images(synthetic_dir, tmp_path / "images", 8)


def damage_embeddings(index_dir: Path) -> None:
    (embeddings,) = index_dir.glob("shard-*/embeddings.npy")
    embeddings.write_bytes(embeddings.read_bytes()[:200])


def remove_rows(index_dir: Path) -> None:
    (rows,) = index_dir.glob("shard-*/rows.parquet")
    rows.unlink()


def damage_manifest(index_dir: Path) -> None:
    text = (index_dir / "manifest.json").read_text()
    (index_dir / "manifest.json").write_text(text[: len(text) // 2])


def written_in_format_3(index_dir: Path) -> None:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    (index_dir / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))


def escape_with_a_shard(index_dir: Path) -> None:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../../etc"
    (index_dir / "manifest.json").write_text(json.dumps(manifest))


def escape_with_a_row(index_dir: Path) -> None:
    (rows,) = index_dir.glob("shard-*/rows.parquet")
    table = pq.read_table(rows)
    files = table["file"].to_pylist()
    pq.write_table(table.set_column(1, "file", pa.array(["../../etc/passwd"] * len(files))), rows)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (damage_embeddings, "is damaged or missing"),
        (remove_rows, "rows.parquet is missing"),
        (damage_manifest, "manifest.json is damaged"),
        (written_in_format_3, "is an index of an earlier rsitr_hf (format 3; this one reads format 4)"),
        (escape_with_a_shard, "shard '../../etc' (deletions None) is not a name it writes"),
        (escape_with_a_row, "lists '../../etc/passwd', outside its folder"),
    ],
)
def test_a_damaged_or_crafted_index_is_one_line_saying_how_to_rebuild(
    damage, expected, image_folder, tmp_path, search_model, capsys
):
    index_dir = tmp_path / "index"
    build_index(image_folder, index_dir, search_model, batch_size=8)
    damage(index_dir)
    with pytest.raises(SearchError, match="build it again with rsitr-search index"):
        search_images(ImageIndex.load(index_dir), search_model, ["a river"])
    assert_one_line_error(
        capsys, search_main(["query", "--index", str(index_dir), "--text", "a river"]), expected
    )
    status = visualize_main(
        [
            "--index",
            str(index_dir),
            "--queries",
            str(write_queries(tmp_path)),
            "--out",
            str(tmp_path / "g.png"),
        ]
    )
    assert_one_line_error(capsys, status, expected)
    assert not (tmp_path / "g.png").exists()


def disk_full_after(write):
    """``write`` that does its work, then fails as a full disk does (what it wrote left behind)."""

    def failing(self, *args, **kwargs):
        write(self, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    return failing


@pytest.mark.parametrize("output", ["grid.png", "rows.parquet"])
def test_a_full_disk_under_a_grid_or_an_export_is_one_line_and_the_previous_file_stays(
    output, image_folder, tmp_path, search_model, monkeypatch, capsys
):
    import matplotlib.figure

    index_dir, out = tmp_path / "index", tmp_path / output
    build_index(image_folder, index_dir, search_model, batch_size=8)
    if output == "grid.png":  # rsitr-visualize, through matplotlib
        arguments = ["--index", str(index_dir), "--queries", str(write_queries(tmp_path)), "--out", str(out)]
        command, writer, method = visualize_main, matplotlib.figure.Figure, "savefig"
    else:  # rsitr-search export, through pyarrow
        arguments = ["export", "--index", str(index_dir), str(out)]
        command, writer, method = search_main, pq.ParquetWriter, "write_table"
    assert command(arguments) == 0
    before, files = out.read_bytes(), sorted(tmp_path.iterdir())
    with monkeypatch.context() as patched:
        patched.setattr(writer, method, disk_full_after(getattr(writer, method)))
        assert_one_line_error(capsys, command(arguments), f"{out}: cannot write it (No space left on device)")
    assert out.read_bytes() == before and sorted(tmp_path.iterdir()) == files  # no partial file left


def write_queries(tmp_path: Path) -> Path:
    path = tmp_path / "queries.tsv"
    path.write_text("a river\n")
    return path


def test_concurrent_indexers_wait_for_each_other(image_folder, tmp_path, search_model):
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    finished = []
    lock = FileLock(str(index_dir / ".lock"))
    lock.acquire()
    worker = threading.Thread(
        target=lambda: finished.append(build_index(image_folder, index_dir, search_model, batch_size=8))
    )
    worker.start()
    time.sleep(1.0)
    assert not finished and not (index_dir / "manifest.json").exists()  # waiting for the lock
    lock.release()
    worker.join(timeout=120)
    assert finished and finished[0].total == 8


# --- Adapter and checkpoint files that cannot be read ----------------------------------------------------


@pytest.fixture
def adapter_dir(tmp_path, tiny_clip_dir) -> Path:
    from peft import get_peft_model
    from transformers import CLIPModel

    from rsitr_hf import MRSAdapterConfig

    model = get_peft_model(
        CLIPModel.from_pretrained(tiny_clip_dir), MRSAdapterConfig(bottleneck_dim=8, shared_dim=4)
    )
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def truncate_weights(adapter: Path) -> str:
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    return f"{weights}: not a readable safetensors file"


def pickle_as_safetensors(adapter: Path) -> str:
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(pickle.dumps({"weight": Canary(adapter.parent / "unpickled")}))
    return f"{weights}: not a readable safetensors file"


def pickle_as_bin(adapter: Path) -> str:
    """peft's pickled format, alone in the folder: a crafted pickle that would create a file."""
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(
        pickle.dumps({"weight": Canary(adapter.parent / "unpickled")})
    )
    return (
        f"{adapter / 'adapter_model.bin'} is a pickled weights file, which rsitr_hf does not load "
        "(unpickling can run code); save the adapter as safetensors"
    )


def wrong_peft_type(adapter: Path) -> str:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["peft_type"] = "NO_SUCH_METHOD"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return f"{adapter / 'adapter_config.json'}: field peft_type: 'NO_SUCH_METHOD' is not a PEFT type"


def class_folders(image_folder: Path, tmp_path: Path) -> Path:
    """Two classes of two images each, for rsitr-classify."""
    images = sorted(image_folder.iterdir())
    for number, name in enumerate(("river", "forest")):
        (tmp_path / "classes" / name).mkdir(parents=True)
        for image in images[2 * number : 2 * number + 2]:
            shutil.copy(image, tmp_path / "classes" / name / image.name)
    return tmp_path / "classes"


ADAPTER_COMMANDS = ["search index", "search query", "app", "classify", "audit", "visualize"]


def run_with_adapter(command: str, adapter: Path, index_dir: Path, model, folders: dict) -> int:
    """Exit status of ``command`` given ``adapter`` (rsitr-visualize: the adapter of the index it opens)."""
    from rsitr_hf.search.app import main as app_main
    from rsitr_hf.tools.audit import main as audit_main
    from rsitr_hf.tools.classify import main as classify_main

    named = ["--model", str(model), "--adapter", str(adapter)]
    if command == "search index":
        return search_main(["index", str(folders["images"]), "--index", str(folders["tmp"] / "new"), *named])
    if command == "search query":
        return search_main(["query", "--index", str(index_dir), "--text", "a river", *named])
    if command == "app":
        return app_main(["--index", str(index_dir), "--adapter", str(adapter)])
    if command == "classify":
        return classify_main([str(class_folders(folders["images"], folders["tmp"])), *named])
    if command == "audit":
        return audit_main([str(folders["data"]), "--output_dir", str(folders["tmp"] / "audit"), *named])
    queries = write_queries(folders["tmp"])
    return visualize_main(
        ["--index", str(index_dir), "--queries", str(queries), "--out", str(folders["tmp"] / "g.png")]
    )


@pytest.mark.parametrize("command", ADAPTER_COMMANDS)
@pytest.mark.parametrize("damage", [truncate_weights, pickle_as_safetensors, pickle_as_bin, wrong_peft_type])
def test_an_unreadable_adapter_is_one_line_naming_its_file_in_every_command(
    command, damage, adapter_dir, tiny_clip_dir, image_folder, synthetic_dir, tmp_path, capsys
):
    index_dir = tmp_path / "index"
    build_index(image_folder, index_dir, RetrievalModel(tiny_clip_dir, adapter_dir), batch_size=8)
    expected = damage(adapter_dir)
    capsys.readouterr()
    folders = {"images": image_folder, "tmp": tmp_path, "data": synthetic_dir}
    status = run_with_adapter(command, adapter_dir, index_dir, tiny_clip_dir, folders)
    assert_one_line_error(capsys, status, expected)
    assert not (tmp_path / "unpickled").exists()  # refused without being unpickled
    with pytest.raises(AdapterFileError, match="(safetensors|peft_type|pickled)"):
        RetrievalModel(tiny_clip_dir, adapter_dir)


def test_torchscript_archives_are_read_only_when_trusted(tmp_path, monkeypatch, capsys):
    archive = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), archive)
    loaded = []
    real_jit_load = torch.jit.load
    monkeypatch.setattr(
        torch.jit, "load", lambda *args, **kwargs: loaded.append(args) or real_jit_load(*args, **kwargs)
    )
    arguments = [str(archive), str(tmp_path / "hf"), "--tokenizer", "unused"]
    assert_one_line_error(capsys, convert_main(arguments), "is a TorchScript archive", "--trust_torchscript")
    assert not loaded
    status = convert_main([*arguments, "--trust_torchscript"])
    assert loaded and status == 2  # read, then refused for what it holds: not a CLIP
    assert "Traceback" not in capsys.readouterr().err


def test_the_validate_command_names_a_non_utf8_line(dataset_copy, capsys):
    break_utf8(dataset_copy)
    assert validate_main([str(dataset_copy), "--headers_only"]) == 1
    out = capsys.readouterr().out
    assert "train_caps.txt, line 7: is not UTF-8: byte 0xff at byte 5 of the line" in out


def test_nothing_in_a_checkpoint_or_index_is_loaded_with_pickle(tmp_path):
    """The package never calls ``pickle.load``, ``torch.load`` without ``weights_only=True`` or
    ``torch.jit.load`` outside the trusted-TorchScript path."""
    package = Path(rsitr_hf.__file__).parent
    offending = []
    for source in package.rglob("*.py"):
        for number, line in enumerate(source.read_text().splitlines(), start=1):
            code = line.split("#")[0]
            unsafe = "pickle.load" in code or ("torch.load(" in code and "weights_only=True" not in code)
            if unsafe or ("torch.jit.load" in code and source.name != "convert.py"):
                offending.append(f"{source.relative_to(package)}:{number}: {line.strip()}")
    assert offending == []
