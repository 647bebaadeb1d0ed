import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from rsitr_hf.evaluation import (
    METRIC_MODULE_DIR,
    TIE_PROTOCOLS,
    load_retrieval_metric,
    retrieval_metrics,
    retrieval_ranks,
)


def test_hand_worked_two_images_two_captions_each():
    # images 0, 1; captions c0, c1 of image 0 and c2, c3 of image 1
    similarity = np.array(
        [
            [0.1, 0.9, 0.8, 0.2],  # image 0: own best c1 (0.9) beats c2 (0.8): rank 0
            [0.7, 0.3, 0.2, 0.4],  # image 1: own best c3 (0.4) has c0 (0.7) above: rank 1
        ]
    )
    caption_image_ids = [0, 0, 1, 1]
    i2t, t2i = retrieval_ranks(similarity, caption_image_ids)
    assert i2t.tolist() == [0, 1]
    # c0: own 0.1 < 0.7 -> 1; c1: 0.9 > 0.3 -> 0; c2: own 0.2 < 0.8 -> 1; c3: 0.4 > 0.2 -> 0
    assert t2i.tolist() == [1, 0, 1, 0]
    metrics = retrieval_metrics(similarity, caption_image_ids)
    assert metrics["i2t_r1"] == pytest.approx(50.0)
    assert metrics["t2i_r1"] == pytest.approx(50.0)
    assert metrics["i2t_r5"] == metrics["t2i_r10"] == 100.0
    assert metrics["mR"] == pytest.approx((50 + 100 + 100 + 50 + 100 + 100) / 6)


def test_ties_count_against_the_query_and_constant_scores_give_zero():
    similarity = np.array([[0.5, 0.5], [0.5, 0.5]])
    i2t, t2i = retrieval_ranks(similarity, [0, 1])
    assert i2t.tolist() == [1, 1] and t2i.tolist() == [1, 1]
    assert retrieval_metrics(np.zeros((3, 15)), np.repeat(np.arange(3), 5))["i2t_r1"] == 0.0
    # a tie among the image's own captions does not hurt
    assert retrieval_ranks(np.array([[0.9, 0.9, 0.1], [0.0, 0.0, 1.0]]), [0, 0, 1])[0].tolist() == [0, 0]


def test_identical_caption_of_another_image_is_never_a_hit():
    # captions 1 and 2 are the same string ("a dense residential area") for images 0 and 1, so any model
    # scores them equally; the metric must not credit image 1 for caption 1 nor image 0 for caption 2.
    similarity = np.array(
        [
            [0.2, 0.8, 0.8, 0.1],
            [0.1, 0.6, 0.6, 0.3],
        ]
    )
    caption_image_ids = [0, 0, 1, 1]
    i2t, t2i = retrieval_ranks(similarity, caption_image_ids)
    assert i2t.tolist() == [1, 1]  # each image's best own caption ties with the other's copy
    assert t2i.tolist() == [0, 0, 1, 0]  # caption 2 belongs to image 1, which scores it lower than image 0


def test_best_of_five_and_non_sequential_image_ids():
    rng = np.random.default_rng(0)
    similarity = rng.random((3, 15))
    ids = np.array([70, 10, 42])
    caption_ids = np.repeat(ids, 5)
    similarity[1, 7] = 5.0  # image 10's third caption is its best and the best of the row
    i2t, _ = retrieval_ranks(similarity, caption_ids, image_ids=ids)
    assert i2t[1] == 0
    permutation = rng.permutation(15)
    permuted_i2t, permuted_t2i = retrieval_ranks(similarity[:, permutation], caption_ids[permutation], ids)
    assert torch.equal(permuted_i2t, i2t)
    assert torch.equal(permuted_t2i, retrieval_ranks(similarity, caption_ids, ids)[1][permutation])


def test_brute_force_agreement_on_random_matrices():
    rng = np.random.default_rng(1)
    similarity = np.round(rng.random((6, 30)), 1)  # rounding creates many ties
    caption_ids = np.repeat(np.arange(6), 5)
    i2t, t2i = retrieval_ranks(similarity, caption_ids)
    for i in range(6):
        best = similarity[i, caption_ids == i].max()
        assert i2t[i] == sum(similarity[i, j] >= best for j in range(30) if caption_ids[j] != i)
    for j in range(30):
        own = similarity[caption_ids[j], j]
        assert t2i[j] == sum(similarity[i, j] >= own for i in range(6) if i != caption_ids[j])


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="caption ids"):
        retrieval_ranks(np.zeros((2, 4)), [0, 0, 1])
    with pytest.raises(ValueError, match="belong to no image row"):
        retrieval_ranks(np.zeros((2, 2)), [0, 5])
    with pytest.raises(ValueError, match="image id 1 has no caption"):
        retrieval_ranks(np.zeros((2, 2)), [0, 0])


def test_evaluate_module_matches_function():
    rng = np.random.default_rng(2)
    similarity = rng.random((4, 20))
    ids = [3, 1, 2, 0]
    caption_ids = np.repeat(ids, 5)
    metric = load_retrieval_metric()
    metric.add_batch(predictions=similarity[:2], references=ids[:2])
    metric.add_batch(predictions=similarity[2:], references=ids[2:])
    result = metric.compute(caption_image_ids=caption_ids)
    expected = retrieval_metrics(similarity, caption_ids, ids)
    assert result == pytest.approx(expected)


def metric_cases():
    """Random scores, duplicated captions with exact ties, a constant matrix, and shuffled image ids."""
    rng = np.random.default_rng(5)
    ids = [7, 2, 9, 4, 0, 5]
    caption_ids = np.repeat(ids, 5)
    tied = rng.integers(0, 4, (6, 30)).astype(np.float64)  # few values: many exact ties
    yield rng.random((6, 30)), caption_ids, ids
    yield tied, caption_ids, ids
    yield np.zeros((6, 30)), caption_ids, ids
    yield rng.normal(size=(3, 7)), [1, 0, 2, 1, 0, 2, 2], [2, 0, 1]


def test_the_evaluate_module_is_self_contained_and_equals_retrieval_metrics(tmp_path):
    """The module loads and computes with ``rsitr_hf`` unimportable, and agrees with the torch function."""
    cases = [(np.asarray(s).tolist(), np.asarray(c).tolist(), list(i)) for s, c, i in metric_cases()]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = f"""
import json, sys
sys.modules["rsitr_hf"] = None  # any import of rsitr_hf now fails
import evaluate
metric = evaluate.load({str(METRIC_MODULE_DIR)!r})
results = []
for similarity, caption_ids, ids in json.load(open({str(tmp_path / "cases.json")!r})):
    metric.add_batch(predictions=similarity, references=ids)
    results.append(metric.compute(caption_image_ids=caption_ids))
print(json.dumps(results))
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    for result, (similarity, caption_ids, ids) in zip(results, metric_cases(), strict=True):
        assert result == pytest.approx(retrieval_metrics(similarity, caption_ids, ids), abs=1e-9)
    # a constant matrix: ties count against the query, so a caption's image ranks behind the 5 others
    assert results[2]["t2i_r5"] == 0.0 and results[2]["t2i_r10"] == 100.0 and results[2]["i2t_r10"] == 0.0


def test_the_evaluate_module_keeps_float64_scores():
    # own captions beat the others by 1e-10: float32 would make them exact ties and score 0
    similarity = np.full((2, 4), 0.5)
    similarity[0, :2] += 1e-10
    similarity[1, 2:] += 1e-10
    caption_ids = [0, 0, 1, 1]
    metric = load_retrieval_metric()
    result = metric.compute(predictions=similarity, references=[0, 1], caption_image_ids=caption_ids)
    assert result["mR"] == 100.0
    assert retrieval_metrics(similarity, caption_ids)["mR"] == 100.0
    as_float32 = retrieval_metrics(similarity.astype(np.float32), caption_ids)
    assert as_float32["i2t_r1"] == as_float32["t2i_r1"] == 0.0


def test_the_evaluate_module_has_a_metric_card():
    card = (METRIC_MODULE_DIR / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(card.split("---")[1])
    assert {"evaluate", "metric"} <= set(header["tags"])
    assert header["sdk"] == "gradio" and (METRIC_MODULE_DIR / header["app_file"]).is_file()
    for section in (
        "## Metric Description",
        "## How to Use",
        "### Inputs",
        "### Output Values",
        "## Citation",
    ):
        assert section in card
    metric = load_retrieval_metric()
    metric.add_batch(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])
    assert repr(metric.compute(caption_image_ids=[0, 1])) in card  # the card's example prints this


def galr_i2t_t2i(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ranks of GaLR / PE-RSITR's ``i2t`` and ``t2i`` (5 consecutive captions per image), transcribed."""
    npts = sims.shape[0]
    i2t_ranks = np.zeros(npts)
    for index in range(npts):
        inds = np.argsort(sims[index])[::-1]
        rank = 1e20
        for i in range(5 * index, 5 * index + 5, 1):
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        i2t_ranks[index] = rank
    t2i_ranks = np.zeros(5 * npts)
    transposed = sims.T
    for index in range(npts):
        for i in range(5):
            inds = np.argsort(transposed[5 * index + i])[::-1]
            t2i_ranks[5 * index + i] = np.where(inds == index)[0][0]
    return i2t_ranks, t2i_ranks


def test_tie_protocols_on_ucm_shaped_data_reference_is_the_fields_code_and_is_bounded():
    from rsitr_hf.tools.ucm_ties import ucm_shaped_similarity

    similarity, caption_image_ids = ucm_shaped_similarity(seed=0)
    assert similarity.shape == (210, 1050) and similarity.dtype == np.float32
    ranks = {ties: retrieval_ranks(similarity, caption_image_ids, ties=ties) for ties in TIE_PROTOCOLS}
    galr_i2t, galr_t2i = galr_i2t_t2i(similarity)
    np.testing.assert_array_equal(ranks["reference"][0].numpy(), galr_i2t)
    np.testing.assert_array_equal(ranks["reference"][1].numpy(), galr_t2i)
    for direction in (0, 1):
        assert (ranks["optimistic"][direction] <= ranks["reference"][direction]).all()
        assert (ranks["reference"][direction] <= ranks["pessimistic"][direction]).all()
    # the captions shared by several images make the image queries' protocols differ, by a lot
    assert (ranks["optimistic"][0] < ranks["pessimistic"][0]).sum() > 100
    assert torch.equal(ranks["optimistic"][1], ranks["pessimistic"][1])  # no tie between images
    metric = load_retrieval_metric()
    for ties in TIE_PROTOCOLS:
        expected = retrieval_metrics(similarity, caption_image_ids, ties=ties)
        module = metric.compute(
            predictions=similarity.tolist(), references=list(range(210)),
            caption_image_ids=caption_image_ids.tolist(), ties=ties,
        )  # fmt: skip
        assert module == pytest.approx(expected)


def test_tie_protocols_on_a_hand_made_case():
    # image 0 owns captions 0 and 1; caption 2 (image 1's) scores exactly like caption 0 for image 0
    similarity = np.array([[0.5, 0.2, 0.5], [0.1, 0.1, 0.9]], dtype=np.float32)
    assert retrieval_ranks(similarity, [0, 0, 1], ties="pessimistic")[0].tolist() == [1, 0]
    assert retrieval_ranks(similarity, [0, 0, 1], ties="optimistic")[0].tolist() == [0, 0]
    first = np.argsort(similarity[0])[::-1][0]  # which of the tied pair numpy's reversed argsort puts first
    assert retrieval_ranks(similarity, [0, 0, 1], ties="reference")[0].tolist() == [int(first != 0), 0]
    with pytest.raises(ValueError, match="ties must be one of"):
        retrieval_ranks(similarity, [0, 0, 1], ties="random")
