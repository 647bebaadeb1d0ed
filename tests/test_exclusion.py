"""data.exclude_test_duplicates: training leaves out exactly the images an audit links to the test split."""

import json
import shutil

import pytest
from conftest import write_recipe

from rsitr_hf.data import load_rsitr
from rsitr_hf.data.duplicates import audit, linked_training_files
from rsitr_hf.training import train
from rsitr_hf.training.data import drop_test_duplicates
from rsitr_hf.training.recipe import RecipeError, load_recipe


def pair(a: tuple[str, str, str], b: tuple[str, str, str], verified: bool = True) -> dict:
    where = ("dataset", "split", "file")
    return {
        "a": dict(zip(where, a, strict=True)),
        "b": dict(zip(where, b, strict=True)),
        "evidence": {"perceptual": 3.0},
        "verified": verified,
    }


AUDITED = [{"name": "synthrs", "images_audited": True}, {"name": "other", "images_audited": True}]
MANIFEST = {
    "datasets": AUDITED,
    "image_pairs": [
        pair(("synthrs", "train", "train_00003.tif"), ("synthrs", "test", "test_00001.tif")),
        pair(("synthrs", "test", "test_00004.tif"), ("synthrs", "train", "train_00017.tif")),  # either order
        pair(("synthrs", "train", "train_00005.tif"), ("synthrs", "train", "train_00006.tif")),  # not test
        pair(
            ("other", "train", "train_00008.tif"), ("synthrs", "test", "test_00002.tif")
        ),  # not this dataset
        pair(("synthrs", "train", "train_00009.tif"), ("synthrs", "test", "test_00003.tif"), verified=False),
    ],
}
LINKED = {"train_00003.tif", "train_00017.tif"}
CANDIDATE = "train_00009.tif"  # linked by a pair that was not verified


def excluding_with(manifest: dict | str, tmp_path, tiny_clip_dir, synthetic_dir, **fields):
    """The recipe of a run that excludes with ``manifest`` (a mapping written as JSON, or the file's text),
    written to ``audit.json``; ``fields``: more recipe overrides."""
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (tmp_path / "audit.json").write_text(text)
    return load_recipe(
        write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out"),
        {"data.exclude_test_duplicates": str(tmp_path / "audit.json"), **fields},
    )


def refused(recipe, synthetic_dir, problem: str) -> None:
    """Excluding with ``recipe``'s manifest is a one-line :class:`RecipeError` naming the manifest's field
    (``problem``: a regular expression of what follows the manifest's name)."""
    with pytest.raises(RecipeError, match=rf"^data.exclude_test_duplicates: .*audit.json{problem}"):
        drop_test_duplicates(recipe, {"synthrs": load_rsitr(synthetic_dir)})


def test_exactly_the_linked_training_images_are_dropped(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = excluding_with(MANIFEST, tmp_path, tiny_clip_dir, synthetic_dir)
    full = load_rsitr(synthetic_dir, validation_fraction=0.2)
    kept, record = drop_test_duplicates(recipe, {"synthrs": full})
    for split in ("train", "validation"):
        assert set(kept["synthrs"][split]["filename"]) == set(full[split]["filename"]) - LINKED
        assert record["dropped"]["synthrs"][split] == sorted(set(full[split]["filename"]) & LINKED)
    assert kept["synthrs"]["test"]["filename"] == full["test"]["filename"]
    assert sum(len(files) for files in record["dropped"]["synthrs"].values()) == len(LINKED)
    assert record["manifest"] == str(tmp_path / "audit.json") and record["test_splits_of"] == ["synthrs"]


def test_unverified_candidates_are_dropped_only_when_asked(tmp_path, tiny_clip_dir, synthetic_dir):
    fields = {"data.exclude_unverified_candidates": True}
    recipe = excluding_with(MANIFEST, tmp_path, tiny_clip_dir, synthetic_dir, **fields)
    full = load_rsitr(synthetic_dir, validation_fraction=0.2)
    kept, record = drop_test_duplicates(recipe, {"synthrs": full})
    assert set(kept["synthrs"]["train"]["filename"]) | set(kept["synthrs"]["validation"]["filename"]) == (
        set(full["train"]["filename"]) | set(full["validation"]["filename"])
    ) - LINKED - {CANDIDATE}
    assert record["pairs"] == "verified and unverified candidate pairs"


@pytest.mark.parametrize(
    "manifest, problem",
    [
        ({"image_pairs": []}, "no datasets list"),
        ({"datasets": [{"name": "synthrs"}], "image_pairs": []},
         r"datasets\[0\] has no images_audited: true/false"),
        ({"datasets": AUDITED}, "no image_pairs list"),
        ({"datasets": AUDITED,
          "image_pairs": [{k: v for k, v in MANIFEST["image_pairs"][0].items() if k != "verified"}]},
         r"image_pairs\[0\] has no verified: true/false"),
        ({"datasets": AUDITED,
          "image_pairs": [{**MANIFEST["image_pairs"][0], "b": {"dataset": "synthrs", "split": "test"}}]},
         r"image_pairs\[0\]\.b lacks one of dataset, split, file"),
    ],
)  # fmt: skip
def test_a_manifest_without_the_fields_exclusion_reads_is_one_line(
    tmp_path, tiny_clip_dir, synthetic_dir, manifest, problem
):
    recipe = excluding_with(manifest, tmp_path, tiny_clip_dir, synthetic_dir)
    refused(recipe, synthetic_dir, rf": {problem} \(expected")


def test_a_run_audits_its_dataset_and_records_what_it_dropped(tmp_path, tiny_clip_dir, synthetic_dir):
    planted = tmp_path / "synthrs_precomp"
    shutil.copytree(synthetic_dir, planted)
    images = planted / "synthrs_images"
    shutil.copyfile(
        images / "train_00007.tif", images / "test_00000.tif"
    )  # a training image in the test split
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, planted, tmp_path / "out", max_steps=2)
    result = train(load_recipe(recipe, {"data.exclude_test_duplicates": True}))
    record = json.loads((tmp_path / "out" / "excluded_training_images.json").read_text())
    assert record["manifest"].startswith("audited when the run started")
    dropped = [name for files in record["dropped"]["synthrs"].values() for name in files]
    assert "train_00007.tif" in dropped
    assert set(dropped) == linked_training_files(audit([planted]).manifest(), "synthrs", ["synthrs"])
    trained_on = {
        name for split in ("train", "validation") for name in load_rsitr(planted)[split]["filename"]
    }
    assert result.cost["trainable_parameters"] > 0 and set(dropped) <= trained_on


def test_a_bad_manifest_names_the_field(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = excluding_with("{not json", tmp_path, tiny_clip_dir, synthetic_dir)
    refused(recipe, synthetic_dir, " is not a readable")


@pytest.mark.parametrize(
    "datasets, named",
    [
        ([{"name": "other", "images_audited": True}], "those of other, not of synthrs"),
        ([{"name": "synthrs", "images_audited": False}], "those of no dataset, not of synthrs"),
    ],
)
def test_a_manifest_of_other_datasets_is_refused_naming_them(
    tmp_path, tiny_clip_dir, synthetic_dir, datasets, named
):
    recipe = excluding_with({**MANIFEST, "datasets": datasets}, tmp_path, tiny_clip_dir, synthetic_dir)
    refused(recipe, synthetic_dir, f": its images are {named} ")
