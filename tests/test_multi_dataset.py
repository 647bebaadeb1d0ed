"""Recipes over several datasets: data.datasets, the concatenated and weighted training data, validation and
test per dataset with their mean, exclusion across datasets, the model card and the RET-2/RET-3 recipes."""

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from conftest import ROOT, write_recipe
from peft import PeftModel
from transformers import CLIPModel, CLIPProcessor

import rsitr_hf  # noqa: F401  (registers the tuners with peft)
from rsitr_hf.data import load_rsitr
from rsitr_hf.data.sampling import EpochWeightedSampler
from rsitr_hf.data.text_inputs import TextInputs
from rsitr_hf.evaluation import METRIC_KEYS, evaluate_retrieval
from rsitr_hf.training import load_recipe, model_card, train
from rsitr_hf.training.data import drop_test_duplicates, load_datasets, prepare_data, training_loader
from rsitr_hf.training.recipe import RecipeError, dataset_sources


@pytest.fixture(scope="module")
def second_dir(tmp_path_factory) -> Path:
    """A second synthetic dataset (its own name, images and captions) beside ``synthetic_dir``."""
    from rsitr_hf.demo.synthetic import write_seed_layout

    return write_seed_layout(
        tmp_path_factory.mktemp("second"), "synthb", num_train=20, num_test=10, seed=5, image_size=32
    )


def two_dataset_recipe(tmp_path, tiny_clip_dir, first, second, second_weight=1.0, **training):
    path = write_recipe(tmp_path / "recipe.yaml", tiny_clip_dir, first, tmp_path / "out", **training)
    values = yaml.safe_load(path.read_text())
    values["data"] = {
        "datasets": [{"path": str(first)}, {"path": str(second), "weight": second_weight}],
        "validation_fraction": 0.2,
    }
    path.write_text(yaml.safe_dump(values))
    return load_recipe(path)


def test_a_missing_dataset_folder_is_named_by_its_field(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = two_dataset_recipe(tmp_path, tiny_clip_dir, synthetic_dir, tmp_path / "absent_precomp")
    for step in (load_datasets, train):  # training stops before any work: no output folder
        with pytest.raises(
            RecipeError, match=r"^data\.datasets\[1\]\.path: .*absent_precomp is not a folder"
        ):
            step(recipe)
    assert not (tmp_path / "out").exists()


def test_items_take_the_sections_values_unless_they_set_their_own(tmp_path):
    recipe = load_recipe(
        None,
        {
            "data.datasets": [
                {"path": "a/x_precomp"},
                {"path": "b", "format": "hub", "validation_fraction": 0.1},
            ],
            "data.validation_fraction": 0.3,
            "data.empty_captions": "drop",
        },
    )
    first, second = dataset_sources(recipe.data)
    assert (first.format, first.validation_fraction, first.empty_captions, first.weight) == (
        "seed",
        0.3,
        "drop",
        1,
    )
    assert (second.format, second.validation_fraction, second.empty_captions) == ("hub", 0.1, "drop")
    (only,) = dataset_sources(load_recipe(None, {"data.path": "c/y_precomp", "data.split_seed": 4}).data)
    assert (only.path, only.split_seed, only.validation_fraction) == ("c/y_precomp", 4, 0.2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.datasets": [{"path": "a"}, {"pathh": "b"}]}, r"unknown key data\.datasets\[1\]\.pathh"),
        (
            {"data.datasets": [{"path": "a", "weight": 0}]},
            r"data\.datasets\[0\]\.weight: expected a value > 0",
        ),
        (
            {"data.datasets": [{"path": "a"}], "data.path": "b"},
            r"data\.path \(one dataset\) or data\.datasets",
        ),
        ({"data.datasets": [{"name": "x"}]}, r"data\.datasets\[0\]\.path: give the dataset folder"),
        ({"data.datasets": [{"path": "a"}], "data.name": "x"}, r"data\.name: names the one dataset"),
        ({"data.datasets": "a"}, r"data\.datasets: expected a list"),
    ],
)
def test_bad_dataset_lists_name_the_field(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, overrides)


def processor_and_tokens(model_dir) -> tuple:
    """The processor of ``model_dir`` and CLIP's tokens as the text inputs (``prepare_data``'s)."""
    processor = CLIPProcessor.from_pretrained(model_dir)
    return processor, TextInputs(processor.tokenizer)


def test_names_must_differ(tmp_path, tiny_clip_dir, synthetic_dir):
    recipe = two_dataset_recipe(tmp_path, tiny_clip_dir, synthetic_dir, synthetic_dir)
    with pytest.raises(RecipeError, match=r"data\.datasets\[1\]: a second dataset named 'synthrs'"):
        prepare_data(recipe, *processor_and_tokens(tiny_clip_dir), Accelerator(cpu=True))
    recipe.data.datasets[1].name = "again"  # the same folder under another name is allowed
    recipe.evaluation.test_datasets = [str(synthetic_dir)]
    with pytest.raises(RecipeError, match=r"evaluation\.test_datasets: .* is a dataset the run trains on"):
        prepare_data(recipe, *processor_and_tokens(tiny_clip_dir), Accelerator(cpu=True))


def test_training_concatenates_the_datasets_with_distinct_image_ids(
    tmp_path, tiny_clip_dir, synthetic_dir, second_dir
):
    recipe = two_dataset_recipe(tmp_path, tiny_clip_dir, synthetic_dir, second_dir)
    data = prepare_data(recipe, *processor_and_tokens(tiny_clip_dir), Accelerator(cpu=True))
    first, second = load_rsitr(synthetic_dir), load_rsitr(second_dir)
    assert list(data.splits) == ["synthrs", "synthb"]
    assert list(data.train["filename"]) == [*first["train"]["filename"], *second["train"]["filename"]]
    assert len(set(data.train["image_id"])) == len(data.train) == len(first["train"]) + len(second["train"])
    assert len(data.pairs) == sum(len(c) for c in data.train["captions"]) and data.pair_weights is None
    assert len(data.train_pixels) == len(data.train)
    # the pixels of the concatenation are each dataset's own images
    row = len(first["train"]) + 3
    own = prepare_data(
        load_recipe(None, {"data.path": str(second_dir), "base_model": str(tiny_clip_dir)}),
        *processor_and_tokens(tiny_clip_dir), Accelerator(cpu=True),
    )  # fmt: skip
    assert (data.train_pixels.take([row]) == own.train_pixels.take([3])).all()
    assert {name: entry["share"] for name, entry in data.mix.items()} == pytest.approx(
        {"synthrs": 24 / 40, "synthb": 16 / 40}
    )


def test_weights_set_each_datasets_share_of_the_draws(tmp_path, tiny_clip_dir, synthetic_dir, second_dir):
    recipe = two_dataset_recipe(tmp_path, tiny_clip_dir, synthetic_dir, second_dir, second_weight=3.0)
    data = prepare_data(recipe, *processor_and_tokens(tiny_clip_dir), Accelerator(cpu=True))
    first_pairs = data.mix["synthrs"]["train_pairs"]
    assert data.pair_weights == [1.0] * first_pairs + [3.0] * data.mix["synthb"]["train_pairs"]
    assert data.mix["synthb"]["share"] == pytest.approx(3 * 80 / (120 + 3 * 80))
    loader = training_loader(recipe, data, torch.device("cpu"))
    assert isinstance(loader.sampler, EpochWeightedSampler) and len(loader.sampler) == len(data.pairs)
    drawn = []
    for epoch in range(40):
        loader.sampler.set_epoch(epoch)
        drawn += list(loader.sampler)
    share = sum(index >= first_pairs for index in drawn) / len(drawn)
    assert share == pytest.approx(data.mix["synthb"]["share"], abs=0.03)


def test_the_weighted_draw_is_fixed_by_seed_and_epoch():
    sampler = EpochWeightedSampler([1.0, 2.0, 3.0, 4.0], 50, seed=7)
    first = list(sampler)
    assert list(sampler) == first and list(EpochWeightedSampler([1.0, 2.0, 3.0, 4.0], 50, seed=7)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochWeightedSampler([1.0, 2.0, 3.0, 4.0], 50, seed=8)) != first


@pytest.fixture(scope="module")
def two_dataset_run(tmp_path_factory, tiny_clip_dir, synthetic_dir, second_dir):
    root = tmp_path_factory.mktemp("two_datasets")
    recipe = two_dataset_recipe(root, tiny_clip_dir, synthetic_dir, second_dir, epochs=2)
    train(recipe)
    return root / "out"


def test_validation_and_test_are_scored_per_dataset_and_averaged(
    two_dataset_run, tiny_clip_dir, synthetic_dir, second_dir
):
    metrics = json.loads((two_dataset_run / "metrics.json").read_text())
    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), two_dataset_run / "adapter")
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    by_dataset = metrics["test_by_dataset"]
    assert list(by_dataset) == ["synthrs", "synthb", "mean"]
    for name, folder in (("synthrs", synthetic_dir), ("synthb", second_dir)):
        direct = evaluate_retrieval(model, load_rsitr(folder)["test"], processor)
        assert by_dataset[name] == pytest.approx({key: direct[key] for key in METRIC_KEYS})
    for key in METRIC_KEYS:
        assert metrics["test"][key] == pytest.approx(
            statistics.fmean([by_dataset["synthrs"][key], by_dataset["synthb"][key]])
        )
        assert by_dataset["mean"][key] == pytest.approx(metrics["test"][key])
    validations = [e for e in metrics["evaluations"] if e["split"] == "validation"]
    for entry in validations:
        assert set(entry["by_dataset"]) == {"synthrs", "synthb"}
        assert entry["mR"] == pytest.approx(statistics.fmean(m["mR"] for m in entry["by_dataset"].values()))
    best = max(validations, key=lambda entry: entry["mR"])  # selection on the mean validation mR
    assert metrics["best"] == {"step": best["step"], "validation_mR": best["mR"]}
    assert metrics["training_data"]["synthb"]["train_images"] == len(load_rsitr(second_dir)["train"])
    recipe = yaml.safe_load((two_dataset_run / "recipe.yaml").read_text())
    assert [item["path"] for item in recipe["data"]["datasets"]] == [str(synthetic_dir), str(second_dir)]


def test_the_card_lists_every_dataset_and_their_mean(two_dataset_run):
    metrics = json.loads((two_dataset_run / "metrics.json").read_text())
    recipe = yaml.safe_load((two_dataset_run / "recipe.yaml").read_text())
    results = {name: found for name, found in metrics["test_by_dataset"].items() if name != "mean"}
    card = str(model_card(recipe, results, "me/two"))
    front = yaml.safe_load(card.split("---")[1])
    assert front["datasets"] == ["synthrs", "synthb"]
    listed = {
        (entry["dataset"]["name"], metric["type"]): metric["value"]
        for entry in front["model-index"][0]["results"]
        for metric in entry["metrics"]
    }
    assert listed[("synthb", "mR")] == round(results["synthb"]["mR"], 2) and len(listed) == 2 * len(
        METRIC_KEYS
    )
    assert f"| mean | {metrics['test']['i2t_r1']:.2f} |" in card
    assert "the mean validation mR of the datasets trained on" in card


def test_exclusion_drops_training_images_that_duplicate_any_scored_test_split(
    tmp_path, tiny_clip_dir, synthetic_dir, second_dir
):
    def image(dataset: str, split: str, file: str) -> dict:
        return {"dataset": dataset, "split": split, "file": file}

    manifest = {
        "datasets": [{"name": name, "images_audited": True} for name in ("synthrs", "synthb")],
        "image_pairs": [  # synthb's training images that duplicate synthrs's test images, and the reverse
            {
                "a": image("synthb", "train", "train_00002.tif"),
                "b": image("synthrs", "test", "test_00001.tif"),
                "verified": True,
            },
            {
                "a": image("synthrs", "train", "train_00004.tif"),
                "b": image("synthb", "test", "test_00003.tif"),
                "verified": True,
            },
            {
                "a": image("synthrs", "train", "train_00005.tif"),
                "b": image("synthb", "train", "train_00006.tif"),
                "verified": True,
            },
        ],
    }
    (tmp_path / "audit.json").write_text(json.dumps(manifest))
    recipe = two_dataset_recipe(tmp_path, tiny_clip_dir, synthetic_dir, second_dir)
    recipe.data.exclude_test_duplicates = str(tmp_path / "audit.json")
    full = {"synthrs": load_rsitr(synthetic_dir), "synthb": load_rsitr(second_dir)}
    kept, record = drop_test_duplicates(recipe, full)
    for name, linked in (("synthrs", {"train_00004.tif"}), ("synthb", {"train_00002.tif"})):
        for split in ("train", "validation"):
            assert set(kept[name][split]["filename"]) == set(full[name][split]["filename"]) - linked
        assert sum(record["dropped"][name].values(), []) == sorted(linked)
        assert kept[name]["test"]["filename"] == full[name]["test"]["filename"]
    assert record["test_splits_of"] == ["synthrs", "synthb"]


def test_the_ret_recipes_train_the_paper_recipe_on_several_benchmarks():
    for method in ("pe_rsitr", "posapl"):
        single = load_recipe(ROOT / "hub_configs" / f"{method}_rsicd.yaml").to_dict()
        for tag, names in (("ret2", ["rsicd", "rsitmd"]), ("ret3", ["rsicd", "rsitmd", "ucm"])):
            recipe = load_recipe(ROOT / "hub_configs" / f"{method}_{tag}.yaml")
            sources = dataset_sources(recipe.data)
            assert [Path(s.path).name for s in sources] == [f"{name}_precomp" for name in names]
            assert [s.empty_captions for s in sources][:2] == ["error", "drop"]  # RSITMD's empty captions
            assert recipe.data.exclude_test_duplicates is True
            multiple = recipe.to_dict()
            for section in ("base_model", "method", "loss", "optimizer", "schedule", "training"):
                assert multiple[section] == single[section], (method, tag, section)
