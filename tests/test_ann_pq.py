"""Beyond memory: IVF with product quantisation, re-ranked from full-precision vectors, and an image index
whose embeddings are memory-mapped rather than read."""

import numpy as np
import pytest
import torch
from conftest import index_embeddings

from rsitr_hf.search.ann import ANNConfig, ANNIndex
from rsitr_hf.utils.errors import InputError


def unit_vectors(count: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_ivfpq_reranked_at_exhaustive_settings_is_exact_search():
    vectors, queries = unit_vectors(3000), unit_vectors(30, seed=1)
    config = ANNConfig(kind="ivfpq", nlist=16, nprobe=16, pq_bytes=16, rerank=300)  # every list, every row
    index = ANNIndex.build(vectors, config)
    assert index.factory == "IVF16,PQ16" and index.quantised
    scores, rows = index.search(queries, 10)
    exact = queries @ vectors.T
    np.testing.assert_array_equal(rows, np.argsort(-exact, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, rows, axis=1), rtol=1e-5)


def test_without_its_vectors_the_quantised_index_gives_approximate_scores():
    vectors, queries = unit_vectors(3000), unit_vectors(30, seed=1)
    index = ANNIndex.build(vectors, ANNConfig(kind="ivfpq", nlist=16, nprobe=16, pq_bytes=16))
    reranked_scores, reranked_rows = index.search(queries, 10)
    index.vectors = None
    scores, rows = index.search(queries, 10)
    exact = np.take_along_axis(queries @ vectors.T, rows, axis=1)
    assert np.abs(scores - exact).max() > 1e-3  # codes, not vectors
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = [np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
              for found in (rows, reranked_rows)]  # fmt: skip
    assert recall[1] > recall[0]  # re-ranking restores what quantisation loses


def test_ivfpq_calibrates_with_its_reranking_and_sizes_its_codes_to_the_dimension(tmp_path):
    vectors = unit_vectors(1000, dim=24)
    index = ANNIndex.build(vectors, ANNConfig(kind="ivfpq", nlist=8, pq_bytes=16))
    assert index.factory == "IVF8,PQ12"  # 12: the largest divisor of 24 at most 16
    measured = index.calibration
    assert (
        measured.parameter == "nprobe" and measured.queries == 100 and list(measured.tried)[:3] == [1, 2, 4]
    )
    truth = np.argsort(-(vectors[:50] @ vectors.T), axis=1)[
        :, 1:11
    ]  # 50 indexed vectors, each without itself
    found = [
        [row for row in rows if row != i][:10] for i, rows in enumerate(index.search(vectors[:50], 11)[1])
    ]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall == pytest.approx(measured.recall, abs=0.1)  # re-ranked, as calibration measured it
    assert 1 <= measured.rerank < 512 and index.rerank == measured.rerank  # candidates: calibrated too
    settings = index.save(tmp_path)
    assert ANNIndex.load(tmp_path, settings).rerank == measured.rerank
    with pytest.raises(InputError, match="ivfpq: needs at least 256 vectors"):
        ANNIndex.build(vectors[:100], ANNConfig(kind="ivfpq"))


def test_an_image_index_maps_its_embeddings_and_reranks_from_them(tmp_path, tiny_clip_dir):
    from rsitr_hf.demo.synthetic import write_seed_layout
    from rsitr_hf.search import ImageIndex, RetrievalModel, build_index, search_images

    folder = (
        write_seed_layout(tmp_path, "many", num_train=300, num_test=10, seed=6, image_size=32) / "many_images"
    )
    model = RetrievalModel(tiny_clip_dir)
    build_index(folder, tmp_path / "exact", model, batch_size=64, ann=ANNConfig(kind="exact"))
    config = ANNConfig(kind="ivfpq", nlist=4, nprobe=4, pq_bytes=8, rerank=100)  # 5 x 100 >= 310: every row
    build_index(folder, tmp_path / "pq", model, batch_size=64, ann=config)
    index = ImageIndex.load(tmp_path / "pq")
    assert index.ann.factory == "IVF4,PQ8"
    assert index.ann.vectors is index.vectors  # re-ranks from the index's own store
    assert all(isinstance(shard.embeddings, np.memmap) for shard in index.shards)  # on disk until read
    saved = np.concatenate(
        [np.load(path) for path in sorted((tmp_path / "pq").glob("shard-*/embeddings.npy"))]
    )
    torch.testing.assert_close(index_embeddings(index), torch.from_numpy(saved), rtol=0, atol=0)
    queries = ["many planes parked at the airport", "a river next to green fields"]
    exact = search_images(ImageIndex.load(tmp_path / "exact"), model, queries, k=5)
    for found, expected in zip(search_images(index, model, queries, k=5), exact, strict=True):
        assert [hit.item for hit in found] == [hit.item for hit in expected]
        np.testing.assert_allclose([h.score for h in found], [h.score for h in expected], rtol=1e-5)
