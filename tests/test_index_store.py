"""The index as an append-only store (rsitr_hf.search.store): appends write new shards only, deletions are
recorded until compaction, a kill -9 leaves the previous index answering as before, rsitr_hf 0.2's format
is converted, float16 storage, Parquet export, and ``auto`` choosing exact search when IVF cannot reach
its target."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import copy_test_images, index_embeddings, index_files, run_in_fresh_process, write_format_2

from rsitr_hf.search import (
    ImageIndex,
    SearchError,
    build_index,
    compact,
    list_images,
    main,
    search_images,
)
from rsitr_hf.search.ann import ANNConfig
from rsitr_hf.search.store import file_sha256

QUERIES = ["many planes parked at the airport", "a river next to green fields", "a dense residential area"]


@pytest.fixture
def image_folder(tmp_path, synthetic_dir):
    return copy_test_images(synthetic_dir, tmp_path / "images", 10)


@pytest.fixture
def model(search_model):
    return search_model


def answers(index_dir, model) -> list[list[tuple[str, float]]]:
    found = search_images(ImageIndex.load(index_dir), model, QUERIES, k=20)
    return [[(hit.item, round(hit.score, 5)) for hit in hits] for hits in found]


def test_appends_write_new_shards_and_deletions_wait_for_compaction(
    tmp_path, image_folder, synthetic_dir, model
):
    index_dir = tmp_path / "index"
    build_index(image_folder, index_dir, model, batch_size=4)
    first = json.loads((index_dir / "manifest.json").read_text())["shards"]
    assert len(first) == 1 and first[0]["rows"] == 10 and first[0]["first_id"] == 0
    before = index_embeddings(ImageIndex.load(index_dir))

    extra = sorted((synthetic_dir / "synthrs_images").glob("train_*.tif"))[:3]
    for path in extra:
        shutil.copy(path, image_folder / path.name)
    gone = list_images(image_folder)[0]
    (image_folder / gone).unlink()
    update = build_index(image_folder, index_dir, model, batch_size=4)
    assert update.added == [path.name for path in extra] and update.removed == [gone]
    manifest = json.loads((index_dir / "manifest.json").read_text())
    old, new = manifest["shards"]
    assert new["first_id"] == 10 and new["rows"] == 3 and manifest["next_id"] == 13
    # the first shard's files are the bytes written then; its deletion is a file of its own
    for name, checksum in first[0]["checksums"].items():
        assert file_sha256(index_dir / old["name"] / name) == checksum
    assert old["deleted"] == 1 and pq.read_table(index_dir / old["name"] / old["deletions"])[
        "name"
    ].to_pylist() == [gone]
    index = ImageIndex.load(index_dir)
    assert index_files(index) == list_images(image_folder) and len(index) == 12
    torch.testing.assert_close(index_embeddings(index)[:9], before[1:], rtol=0, atol=0)
    served = answers(index_dir, model)
    assert all(gone not in [item for item, _ in hits] and len(hits) == 12 for hits in served)

    assert main(["compact", "--index", str(index_dir)]) == 0
    compacted = json.loads((index_dir / "manifest.json").read_text())["shards"]
    assert compacted[0]["rows"] == 9 and compacted[0]["deletions"] is None
    assert (compacted[0]["first_id"], compacted[0]["end_id"]) == (0, 10)  # row ids are kept
    assert compacted[1] == new and sorted(path.name for path in index_dir.glob("shard-*")) == sorted(
        [compacted[0]["name"], new["name"]]
    )  # the old shard is gone, the untouched one kept
    assert answers(index_dir, model) == served
    assert "nothing to compact" in compact(index_dir)


KILLED_APPEND = """
import os, signal, sys
import rsitr_hf.search.update as update
from rsitr_hf.search import RetrievalModel, build_index

real_write = update.write_shard

def write_then_die(*arguments, **options):
    real_write(*arguments, **options)
    os.kill(os.getpid(), signal.SIGKILL)  # the shard is on disk, the manifest naming it is not

update.write_shard = write_then_die
build_index(sys.argv[1], sys.argv[2], RetrievalModel(sys.argv[3]), batch_size=4)
"""


def test_a_kill_9_during_an_append_leaves_the_previous_index_answering_as_before(
    tmp_path, image_folder, synthetic_dir, model, tiny_clip_dir
):
    index_dir = tmp_path / "index"
    build_index(image_folder, index_dir, model, batch_size=4)
    served, manifest = answers(index_dir, model), (index_dir / "manifest.json").read_bytes()
    for path in sorted((synthetic_dir / "synthrs_images").glob("train_*.tif"))[:5]:
        shutil.copy(path, image_folder / path.name)
    (image_folder / list_images(image_folder)[0]).unlink()  # a deletion file is written too

    result = run_in_fresh_process(tmp_path, KILLED_APPEND, image_folder, index_dir, tiny_clip_dir)
    assert result.returncode == -9, result.stderr[-2000:]
    assert (index_dir / "manifest.json").read_bytes() == manifest
    assert len(list(index_dir.glob("shard-*"))) == 2 and list(
        index_dir.glob("shard-*/deleted-*")
    )  # leftovers
    assert answers(index_dir, model) == served

    update = build_index(image_folder, index_dir, model, batch_size=4)
    assert len(update.added) == 5 and len(update.removed) == 1
    named = {entry["name"] for entry in json.loads((index_dir / "manifest.json").read_text())["shards"]}
    assert {path.name for path in index_dir.glob("shard-*")} == named  # the leftovers were removed
    assert len(list(index_dir.glob("shard-*/deleted-*"))) == 1
    assert index_files(ImageIndex.load(index_dir)) == list_images(image_folder)


def test_a_format_2_index_is_converted_by_its_next_update(tmp_path, image_folder, model, capsys):
    index_dir = tmp_path / "index"
    build_index(image_folder, index_dir, model)
    built = ImageIndex.load(index_dir)
    files, embeddings, served = index_files(built), index_embeddings(built), answers(index_dir, model)
    write_format_2(index_dir, built)
    assert main(["query", "--index", str(index_dir), "--text", "a river"]) == 2
    assert f"{index_dir} is an index of rsitr_hf 0.2 (format 2): update it once" in capsys.readouterr().err

    update = build_index(image_folder, index_dir, model)
    assert update.added == [] and update.removed == []  # nothing embedded again
    assert not (index_dir / "index.json").exists() and not list(index_dir.glob("*.safetensors"))
    converted = ImageIndex.load(index_dir)
    assert index_files(converted) == files and answers(index_dir, model) == served
    torch.testing.assert_close(index_embeddings(converted), embeddings, rtol=0, atol=0)

    (index_dir / "manifest.json").unlink()
    (index_dir / "index.json").write_text('{"format_version": 2, "files": ["../x.tif"]}')
    with pytest.raises(SearchError, match="index.json: cannot convert it .*build it again"):
        build_index(image_folder, index_dir, model)


def test_float16_storage_halves_the_embeddings_and_keeps_the_ranking(tmp_path, image_folder, model):
    build_index(image_folder, tmp_path / "f32", model)
    build_index(image_folder, tmp_path / "f16", model, dtype="float16")
    (f32,), (f16,) = (
        (tmp_path / "f32").glob("shard-*/embeddings.npy"),
        (tmp_path / "f16").glob("shard-*/embeddings.npy"),
    )
    assert np.load(f16).dtype == np.float16 and np.load(f32).dtype == np.float32
    assert np.load(f16).nbytes * 2 == np.load(f32).nbytes
    full, half = answers(tmp_path / "f32", model), answers(tmp_path / "f16", model)
    for exact, rounded in zip(full, half, strict=True):
        assert [item for item, _ in rounded[:5]] == [item for item, _ in exact[:5]]
        np.testing.assert_allclose([s for _, s in rounded], [s for _, s in exact], atol=2e-3)
    with pytest.raises(SearchError, match="stores its embeddings as float16, not float32"):
        build_index(image_folder, tmp_path / "f16", model, dtype="float32")


def test_export_writes_every_row_with_its_embedding(tmp_path, image_folder, model, capsys):
    build_index(image_folder, tmp_path / "index", model)
    (image_folder / list_images(image_folder)[3]).unlink()
    build_index(image_folder, tmp_path / "index", model)  # a deleted row is not exported
    assert main(["export", "--index", str(tmp_path / "index"), str(tmp_path / "rows.parquet")]) == 0
    assert "9 images with their 24-dimensional embeddings (Parquet)" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "rows.parquet")
    index = ImageIndex.load(tmp_path / "index")
    assert table["file"].to_pylist() == index_files(index) and b"geo" not in (table.schema.metadata or {})
    assert table.schema.field("embedding").type.list_size == 24
    exported = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(exported, index_embeddings(index).numpy())


def test_auto_serves_exact_search_when_ivf_cannot_reach_its_target(tmp_path, model):
    pytest.importorskip("faiss")
    from rsitr_hf.demo.synthetic import write_seed_layout

    folder = (
        write_seed_layout(tmp_path, "many", num_train=300, num_test=10, seed=6, image_size=32) / "many_images"
    )
    hard = dict(flat_below=100, target_recall=0.999, max_nprobe_fraction=0.3)
    update = build_index(folder, tmp_path / "auto", model, batch_size=64, ann=ANNConfig(kind="auto", **hard))
    assert update.ann.startswith("none, exact search (auto: IVF") and "below the target 0.999" in update.ann
    index = ImageIndex.load(tmp_path / "auto")
    assert index.ann is None and index.backend().startswith("exact search (auto: IVF")
    assert not list((tmp_path / "auto").glob("ann-*"))
    explicit = build_index(folder, tmp_path / "ivf", model, batch_size=64, ann=ANNConfig(kind="ivf", **hard))
    assert explicit.ann.startswith("built IVF") and not explicit.calibration.reached  # as asked, and said
    assert "below the target 0.999" in ImageIndex.load(tmp_path / "ivf").backend()
    exact = build_index(folder, tmp_path / "exact", model, batch_size=64, ann=ANNConfig(kind="exact"))
    assert exact.ann == "none"
    assert answers(tmp_path / "auto", model) == answers(tmp_path / "exact", model)
