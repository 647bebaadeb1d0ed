import torch
import torch.nn.functional as F

from rsitr_hf.objectives import hinge_triplet_loss, hmmc_loss


def brute_force_hinge(a, b, margin, max_violation, negative):
    scores = a @ b.T
    total = 0.0
    for i in range(len(a)):
        row = [
            max(0.0, margin + scores[i, j].item() - scores[i, i].item())
            for j in range(len(a))
            if negative(i, j)
        ]
        column = [
            max(0.0, margin + scores[j, i].item() - scores[i, i].item())
            for j in range(len(a))
            if negative(i, j)
        ]
        aggregate = max if max_violation else sum
        total += (aggregate(row) if row else 0.0) + (aggregate(column) if column else 0.0)
    return total


def test_hand_computed_two_pairs():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
    # S = [[0.8, 0.6], [0.6, 0.8]]; each of the 4 hinge terms is 0.5 + 0.6 - 0.8 = 0.3
    assert hinge_triplet_loss(a, b, margin=0.5).item() == torch.tensor(1.2).item()
    assert hinge_triplet_loss(a, b, margin=0.2).item() == 0.0


def test_hardest_and_summed_negatives_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 4, generator=generator), dim=-1)
    b = F.normalize(torch.randn(5, 4, generator=generator), dim=-1)
    for max_violation in (True, False):
        expected = brute_force_hinge(a, b, 0.2, max_violation, lambda i, j: i != j)
        assert abs(hinge_triplet_loss(a, b, 0.2, max_violation).item() - expected) < 1e-5


def test_hmmc_is_the_sum_of_three_terms():
    generator = torch.Generator().manual_seed(1)
    v, t, v2, t2 = (F.normalize(torch.randn(4, 6, generator=generator), dim=-1) for _ in range(4))
    expected = sum(
        brute_force_hinge(x, y, 0.2, True, lambda i, j: i != j) for x, y in ((v, t), (v, v2), (t, t2))
    )
    assert abs(hmmc_loss(v, t, v2, t2).item() - expected) < 1e-5


def test_repeated_image_is_not_its_own_negative_unless_paper_mode():
    # items 0 and 1 are two captions of the same image: identical image embeddings
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([7, 7, 9])
    # masked: only cross-image negatives, all at similarity 0 -> m + 0 - 1 < 0 -> no loss
    assert hmmc_loss(v, t, v, t, image_ids=ids).item() == 0.0
    # paper mode: item 1 is a negative of item 0 at similarity 1 -> hinge m = 0.2 per direction and term.
    # Items 0 and 1 each contribute 0.2 + 0.2 in each of the 3 terms: 3 * 2 * 0.4 = 2.4
    paper = hmmc_loss(v, t, v, t, image_ids=ids, mask_same_image=False)
    assert abs(paper.item() - 2.4) < 1e-6
    assert abs(hmmc_loss(v, t, v, t).item() - 2.4) < 1e-6  # no ids: nothing to mask
    expected = sum(
        brute_force_hinge(x, y, 0.2, True, lambda i, j: ids[i] != ids[j]) for x, y in ((v, t), (v, v), (t, t))
    )
    assert hmmc_loss(v, t, v, t, image_ids=ids).item() == expected


def test_the_docs_list_each_losss_options_and_defaults_as_the_loss_table_declares_them():
    """docs/methods.md's loss table: one row per loss of the table, naming the module that declares it and
    every option with its default, in the order of the declaration."""
    import dataclasses
    import inspect
    import re
    from pathlib import Path

    from rsitr_hf.objectives import LOSSES

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    found = re.findall(r"^\| `(\w+)` \| `objectives/(\w+)\.py` \| (.+) \|$", text, re.MULTILINE)
    rows = {name: (module, options) for name, module, options in found}
    builtin = {name: spec for name, spec in LOSSES.items() if spec.compute.__module__.startswith("rsitr_hf.")}
    assert set(rows) == set(builtin)
    for name, spec in builtin.items():
        module, options = rows[name]
        assert inspect.getmodule(spec.compute).__name__ == f"rsitr_hf.objectives.{module}"
        documented = re.findall(r"`(\w+)` \(([^):]+)", options)
        declared = [(f.name, str(f.default).lower()) for f in dataclasses.fields(spec.options)]
        assert documented == declared, name
