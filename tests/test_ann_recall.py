"""An ANN index that knows its recall: calibration of nprobe / efSearch to a target recall@10 on a weakly
clustered set, where a fixed setting misses it; the report when the target cannot be met; the figure in
the manifest, the command's output and the app's header."""

import json

import numpy as np
import pytest

from rsitr_hf.search.ann import ANNConfig, ANNIndex


def weakly_clustered(count: int, dim: int = 48, centres: int = 256, strength: float = 0.6, seed: int = 0):
    """Unit vectors around ``centres`` random centres that are weak against the noise (as the embeddings of
    many similar tiles): neighbourhoods spread over many IVF lists."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, dim))
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    noise = rng.standard_normal((count, dim)) / np.sqrt(dim)
    vectors = strength * middle[rng.integers(0, centres, count)] + noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def independent_recall(index: ANNIndex, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Recall@k of ``index`` for queries that are not indexed vectors, against a brute-force ranking."""
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    found = index.search(queries, k)[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def drawn():
    return weakly_clustered(20_400)


@pytest.fixture(scope="module")
def vectors(drawn):
    return drawn[:20_000]


@pytest.fixture(scope="module")
def fresh_queries(drawn):
    """Vectors of the same clusters that the index never holds."""
    return drawn[20_000:]


def test_a_fixed_nprobe_misses_the_target_and_says_so(vectors, fresh_queries):
    index = ANNIndex.build(vectors, ANNConfig(kind="ivf", nprobe=4))
    measured = index.calibration
    assert independent_recall(index, vectors, fresh_queries) == pytest.approx(measured.recall, abs=0.03)
    assert measured.fixed and (measured.parameter, measured.value) == ("nprobe", 4)
    assert not measured.reached and measured.recall < 0.8
    assert "BELOW the target 0.95" in measured.describe() and "(as given)" in measured.describe()


def test_calibration_finds_the_smallest_nprobe_that_reaches_the_target(vectors, fresh_queries):
    index = ANNIndex.build(vectors, ANNConfig(kind="ivf"))
    measured = index.calibration
    assert index.factory == "IVF128,Flat" and measured.reached and measured.recall >= 0.95
    below = max(value for value in measured.tried if value < measured.value)
    assert measured.value > 4 and measured.tried[below] < 0.95  # the next smaller value tried falls short
    assert measured.value - below <= max(1, below // 8)  # and is within an eighth of it
    doubled = 1 << (measured.value - 1).bit_length()  # the first power of two at or above it
    assert [v for v in measured.tried if v < doubled] == [1 << i for i in range(doubled.bit_length() - 1)] + [
        v for v in measured.tried if doubled // 2 < v < doubled
    ]  # doubling from 1, then values between the last two powers
    assert independent_recall(index, vectors, fresh_queries) == pytest.approx(measured.recall, abs=0.03)
    assert measured.queries == 1000 and measured.k == 10


def test_hnsw_calibrates_its_candidate_list(vectors, fresh_queries):
    index = ANNIndex.build(vectors, ANNConfig(kind="hnsw", hnsw_m=8))
    measured = index.calibration
    assert measured.parameter == "efSearch" and measured.reached and measured.value >= 16
    assert independent_recall(index, vectors, fresh_queries) == pytest.approx(measured.recall, abs=0.03)


def test_an_unreachable_target_is_reported_with_the_best_setting_tried(vectors):
    index = ANNIndex.build(vectors, ANNConfig(kind="ivf", max_nprobe_fraction=1 / 32))  # 4 of 128 lists
    measured = index.calibration
    assert not measured.reached and not measured.fixed and measured.value == 4 == max(measured.tried)
    assert "BELOW the target 0.95" in measured.describe() and "--ann exact" in measured.describe()
    assert "below the target 0.95" in index.summary()


def test_extending_the_index_measures_it_again_and_saving_keeps_the_figure(vectors, tmp_path):
    index = ANNIndex.build(vectors[:12_000], ANNConfig(kind="ivf", nlist=128))
    first = index.calibration
    index.add(vectors[12_000:], store=vectors)
    assert index.calibration is not first and index.calibration.reached
    settings = index.save(tmp_path)
    loaded = ANNIndex.load(tmp_path, json.loads(json.dumps(settings)))  # the manifest holds it as JSON
    assert loaded.calibration == index.calibration and loaded.search_value() == index.calibration.value
    queries = weakly_clustered(50, seed=3)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])


def test_an_index_too_small_to_measure_itself_keeps_its_setting_and_says_so(tmp_path):
    vectors = weakly_clustered(80)  # fewer than MIN_NEW_FOR_CALIBRATION
    settings = ANNIndex.build(vectors, ANNConfig(kind="ivf", nlist=2, nprobe=1)).save(tmp_path)
    loaded = ANNIndex.load(tmp_path, settings)
    assert loaded.calibration is None and loaded.search_value() == 1 and len(loaded) == 80
    assert "recall not measured" in loaded.summary()


def test_the_command_prints_the_recall_which_the_manifest_and_the_app_keep(tmp_path, tiny_clip_dir, capsys):
    from rsitr_hf.demo.synthetic import write_seed_layout
    from rsitr_hf.search import main as search_main
    from rsitr_hf.search.app import SearchPage

    folder = (
        write_seed_layout(tmp_path, "many", num_train=150, num_test=10, seed=4, image_size=32) / "many_images"
    )
    arguments = ["index", str(folder), "--index", str(tmp_path / "index"), "--model", str(tiny_clip_dir)]
    (tmp_path / "searches.txt").write_text("many planes at the airport\na river\n\na river\n")
    texts = ["--calibration_texts", str(tmp_path / "searches.txt")]  # two distinct queries
    assert search_main([*arguments, "--ann", "hnsw", "--target_recall", "0.9", *texts]) == 0
    printed = capsys.readouterr().out
    settings = json.loads((tmp_path / "index" / "manifest.json").read_text())["ann"]["settings"]
    measured = settings["calibration"]
    assert measured["queries"] == 16 and measured["target"] == 0.9 and measured["parameter"] == "efSearch"
    assert measured["text_queries"] == 2
    line = f"search recall@10 {measured['recall']:.3f} at efSearch {measured['value']}, measured with 16"
    assert line + " held-out vectors and 2 text queries" in printed
    header = SearchPage.open(tmp_path / "index").header()
    assert (
        f"FAISS `HNSW32,Flat`, recall@10 {measured['recall']:.3f} at efSearch {measured['value']}" in header
    )


def test_real_text_queries_are_measured_beside_the_held_out_vectors(vectors):
    """Queries of another kind (here: vectors of no cluster, spread as another modality's) can need more lists
    than the held-out vectors; given, they are measured too, and the setting serves both."""
    texts = weakly_clustered(300, strength=0.0, seed=7)
    config = ANNConfig(kind="ivf", max_nprobe_fraction=1.0)  # the texts need more than half the lists
    plain = ANNIndex.build(vectors, config)
    with_texts = ANNIndex.build(vectors, config, queries=texts)
    measured = with_texts.calibration
    assert measured.text_queries == 300 and measured.queries == plain.calibration.queries == 1000
    assert "held-out vectors and 300 text queries" in measured.describe()
    assert independent_recall(plain, vectors, texts) < 0.95  # the vectors' setting misses the texts
    assert measured.value > plain.calibration.value and measured.reached
    assert independent_recall(with_texts, vectors, texts) >= 0.95 - 0.02  # measured afresh, all rows in
