"""The FAISS backend (rsitr_hf.ann): parity with exact search, index choice by size, save/load."""

import numpy as np
import pytest

from rsitr_hf.search.ann import ANNConfig, ANNIndex
from rsitr_hf.utils.errors import InputError


def unit_vectors(count: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize(
    "config",
    [
        ANNConfig(kind="flat"),
        ANNConfig(kind="ivf", nlist=16, nprobe=16),
        ANNConfig(kind="hnsw", ef_search=2000),
    ],
    ids=["flat", "ivf_all_lists", "hnsw_wide"],
)
def test_with_exhaustive_parameters_the_ann_top_k_is_the_exact_top_k(config):
    vectors, queries = unit_vectors(2000), unit_vectors(25, seed=1)
    index = ANNIndex.build(vectors, config)
    scores, rows = index.search(queries, 10)
    exact = exact_top_k(vectors, queries, 10)
    for found, expected in zip(rows, exact, strict=True):
        assert set(found) == set(expected)  # continuous random vectors: no ties at the 10th place
    np.testing.assert_allclose(scores[:, 0], (queries @ vectors.T).max(axis=1), rtol=1e-5)


def test_the_index_type_follows_the_size():
    config = ANNConfig()
    assert config.factory(99_999) == "Flat"
    assert config.factory(1_000_000) == "IVF1024,Flat" and config.nprobe is None  # calibrated
    assert ANNConfig(kind="hnsw").factory(10) == "HNSW32,Flat"
    assert ANNConfig(kind="ivf").factory(2000) == "IVF32,Flat"  # at least 39 training points per list
    with pytest.raises(InputError, match="ann kind: expected one of"):
        ANNConfig(kind="lsh")


def test_a_saved_index_loads_with_its_settings_and_answers_the_same(tmp_path):
    vectors, queries = unit_vectors(3000), unit_vectors(10, seed=2)
    index = ANNIndex.build(vectors, ANNConfig(kind="ivf", nlist=32, nprobe=4))
    settings = index.save(tmp_path)
    loaded = ANNIndex.load(tmp_path, settings)
    assert loaded.factory == "IVF32,Flat" and loaded.config.nprobe == 4 and len(loaded) == 3000
    for before, after in zip(index.search(queries, 5), loaded.search(queries, 5), strict=True):
        np.testing.assert_array_equal(before, after)


def test_rsitr_search_on_a_faiss_index_answers_like_the_exact_one(
    tmp_path, synthetic_dir, tiny_clip_dir, capsys
):
    import json
    import shutil

    from rsitr_hf.search import ImageIndex, RetrievalModel, SearchError, build_index, search_images
    from rsitr_hf.search import main as search_main

    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((synthetic_dir / "synthrs_images").glob("*.tif"))[:20]:
        shutil.copy(path, folder / path.name)
    model = RetrievalModel(tiny_clip_dir)
    build_index(folder, tmp_path / "exact", model, batch_size=8)  # auto: exact at this size, no FAISS file
    assert ImageIndex.load(tmp_path / "exact").ann is None and not list((tmp_path / "exact").glob("ann-*"))
    arguments = ["index", str(folder), "--index", str(tmp_path / "flat"), "--model", str(tiny_clip_dir)]
    assert search_main([*arguments, "--ann", "flat"]) == 0
    flat = ImageIndex.load(tmp_path / "flat")
    metadata = json.loads((tmp_path / "flat" / "manifest.json").read_text())
    assert flat.ann is not None and metadata["ann"]["settings"]["factory"] == "Flat" and len(flat.ann) == 20
    queries = ["many planes parked at the airport", "a river next to green fields"]
    exact_hits = search_images(ImageIndex.load(tmp_path / "exact"), model, queries, k=5)
    faiss_hits = search_images(flat, model, queries, k=5)
    for exact, approximate in zip(exact_hits, faiss_hits, strict=True):
        assert [hit.item for hit in approximate] == [hit.item for hit in exact]
        np.testing.assert_allclose([h.score for h in approximate], [h.score for h in exact], rtol=1e-5)
    # a damaged FAISS file is one line saying how to rebuild
    (tmp_path / "flat" / metadata["ann"]["settings"]["files"][0]).write_bytes(b"not a faiss index")
    with pytest.raises(SearchError, match="is damaged or missing.*build it again"):
        ImageIndex.load(tmp_path / "flat")


def test_an_extended_index_answers_like_one_built_on_all_the_vectors():
    vectors, queries = unit_vectors(3000), unit_vectors(20, seed=3)
    config = ANNConfig(kind="ivf", nlist=16, nprobe=16)
    index = ANNIndex.build(vectors[:2000], config)
    assert index.can_extend(config, 3000)
    index.add(vectors[2000:])
    assert len(index) == 3000
    _, rows = index.search(queries, 10)
    for found, expected in zip(rows, exact_top_k(vectors, queries, 10), strict=True):
        assert set(found) == set(expected)  # the new rows are ids 2000 ... 2999, in order
    automatic = ANNIndex.build(vectors[:1500], ANNConfig(kind="ivf", nprobe=32))
    assert automatic.factory == "IVF32,Flat" and automatic.can_extend(ANNConfig(kind="ivf", nprobe=32), 2000)
    assert not automatic.can_extend(ANNConfig(kind="ivf", nprobe=32), 8000)  # sqrt(8000) ~ 89: IVF64
    assert not automatic.can_extend(ANNConfig(kind="ivf", nprobe=8), 2000)  # other settings


def test_updates_extend_the_faiss_index_which_leaves_deleted_rows_out_until_compaction(
    tmp_path, synthetic_dir, tiny_clip_dir
):
    import shutil

    from rsitr_hf.search import ImageIndex, RetrievalModel, build_index, compact, search_images

    folder = tmp_path / "images"
    folder.mkdir()
    images = sorted((synthetic_dir / "synthrs_images").glob("*.tif"))[:20]
    for path in images[:12]:
        shutil.copy(path, folder / path.name)
    model, config = RetrievalModel(tiny_clip_dir), ANNConfig(kind="hnsw")
    assert build_index(folder, tmp_path / "index", model, batch_size=8, ann=config).ann == "built HNSW32,Flat"
    for path in images[12:]:
        shutil.copy(path, folder / path.name)
    assert (
        build_index(folder, tmp_path / "index", model, batch_size=8, ann=config).ann == "extended HNSW32,Flat"
    )
    extended = ImageIndex.load(tmp_path / "index")
    build_index(folder, tmp_path / "fresh", model, batch_size=8, ann=config)
    queries = [
        "many planes parked at the airport",
        "a river next to green fields",
        "a dense residential area",
    ]
    for grown, fresh in zip(
        search_images(extended, model, queries, k=20),
        search_images(ImageIndex.load(tmp_path / "fresh"), model, queries, k=20),
        strict=True,
    ):
        assert [hit.item for hit in grown] == [hit.item for hit in fresh]  # every image, in exact order
    # a deletion keeps the FAISS index, which leaves the deleted row out as it searches, until compaction
    (folder / images[0].name).unlink()
    update = build_index(folder, tmp_path / "index", model, batch_size=8, ann=config)
    assert update.removed == [images[0].name] and update.ann == "unchanged HNSW32,Flat"  # not written again
    shrunk = search_images(ImageIndex.load(tmp_path / "index"), model, queries, k=20)
    assert all(len(hits) == 19 and images[0].name not in [hit.item for hit in hits] for hits in shrunk)
    assert "1 shard(s) rewritten without their 1 deleted rows (19 images)" in compact(tmp_path / "index")
    compacted = ImageIndex.load(tmp_path / "index")
    assert len(compacted.ann) == 19 and compacted.shards[0].entry.deletions is None  # HNSW: built again
    after = search_images(compacted, model, queries, k=20)
    assert [[hit.item for hit in hits] for hits in after] == [[hit.item for hit in hits] for hits in shrunk]


def test_ivfpq_lists_are_written_once_in_parts_and_searched_memory_mapped(tmp_path, monkeypatch):
    import faiss

    import rsitr_hf.search.ann

    monkeypatch.setattr(rsitr_hf.search.ann, "PART_ROWS", 1000)
    vectors, queries = unit_vectors(5000), unit_vectors(20, seed=2)
    config = ANNConfig(kind="ivfpq", nlist=16, nprobe=16, pq_bytes=8, rerank=64)
    index = ANNIndex.build(vectors[:3000], config, folder=tmp_path)
    first = index.save(tmp_path)["files"]
    assert len(first) == 1 + 3  # the trained index, then three parts of at most 1,000 rows
    written = {name: (tmp_path / name).read_bytes() for name in first}
    index.add(vectors[3000:], store=vectors)
    settings = index.save(tmp_path)
    assert settings["files"][: len(first)] == first and len(settings["files"]) == 1 + 5
    assert all((tmp_path / name).read_bytes() == data for name, data in written.items())  # never rewritten
    loaded = ANNIndex.load(tmp_path, settings)
    assert len(loaded) == 5000
    assert all(isinstance(part.owner, faiss.OnDiskInvertedLists) for part in loaded.parts)  # mapped, not read
    loaded.vectors = index.vectors
    for before, after in zip(index.search(queries, 10), loaded.search(queries, 10), strict=True):
        np.testing.assert_array_equal(before, after)
    # every list probed, every candidate re-ranked from the full vectors: exact
    expected = exact_top_k(vectors, queries, 10)
    assert [set(row) for row in loaded.search(queries, 10)[1]] == [set(row) for row in expected]
