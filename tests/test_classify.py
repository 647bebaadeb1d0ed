"""Zero-shot scene classification: class folders, prompt ensembling, accuracy, the command."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_parameters, write_recipe
from peft import PeftModel, get_peft_model
from transformers import CLIPModel, CLIPProcessor

from rsitr_hf import MRSAdapterConfig
from rsitr_hf.demo.synthetic import make_example
from rsitr_hf.evaluation.classification import clean_class_name, evaluate_class_folders, read_class_folders
from rsitr_hf.tools.classify import main as classify_main
from rsitr_hf.training import train
from rsitr_hf.training.recipe import RecipeError, load_recipe

TEMPLATES = ["a satellite photo of a {}.", "an aerial image of {}"]
FOLDERS = ["baseball_diamond", "DenseResidential", "river"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify") / "scenes"
    for label, folder in enumerate(FOLDERS):
        (root / folder).mkdir(parents=True)
        for index in range(3):
            make_example(label, "test", index, image_size=48)[0].save(root / folder / f"{index}.png")
    return root


def test_class_names_come_from_the_folders_cleaned_or_as_given(scenes):
    assert clean_class_name("baseball_diamond") == "baseball diamond"
    assert clean_class_name("BaseballField") == "baseball field"
    assert clean_class_name("HerbaceousVegetation") == "herbaceous vegetation"
    assert clean_class_name("Annual-Crop") == "annual crop"
    dataset = read_class_folders(scenes, {"river": "river flowing through fields"})
    assert dataset.folders == sorted(FOLDERS)
    assert dataset.class_names == ["dense residential", "baseball diamond", "river flowing through fields"]
    assert dataset.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def hand_computed(tiny_clip_dir, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predictions, class_embeds)`` straight from transformers: per class, the mean of its prompts' unit
    text features, normalised; each image the argmax of its unit image features against them."""
    import PIL.Image

    model, processor = (
        CLIPModel.from_pretrained(tiny_clip_dir).eval(),
        CLIPProcessor.from_pretrained(tiny_clip_dir),
    )
    with torch.no_grad():
        classes = []
        for name in dataset.class_names:
            tokens = processor.tokenizer(
                [t.format(name) for t in TEMPLATES], padding=True, return_tensors="pt"
            )
            features = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
            classes.append(F.normalize(features.mean(0), dim=-1))
        pixels = processor.image_processor(
            [PIL.Image.open(f).convert("RGB") for f in dataset.files], return_tensors="pt"
        )
        images = F.normalize(model.get_image_features(**pixels).pooler_output, dim=-1)
    class_embeds = torch.stack(classes)
    return (images @ class_embeds.T).argmax(dim=1), class_embeds


def test_accuracy_equals_the_hand_computed_argmax(tiny_clip_dir, scenes):
    dataset = read_class_folders(scenes)
    model, processor = (
        CLIPModel.from_pretrained(tiny_clip_dir).eval(),
        CLIPProcessor.from_pretrained(tiny_clip_dir),
    )
    result = evaluate_class_folders(model, processor, dataset, TEMPLATES, batch_size=4)
    expected, _ = hand_computed(tiny_clip_dir, dataset)
    assert torch.equal(result.predictions, expected)
    truth = torch.tensor(dataset.labels)
    assert result.top1 == pytest.approx(100.0 * (expected == truth).float().mean().item())
    assert result.top5 == 100.0  # 3 classes: every label is among the top 5
    assert (result.num_classes, result.num_images) == (3, 9)


def test_the_command_reports_base_adapted_and_retention(tiny_clip_dir, scenes, tmp_path, capsys):
    model = get_peft_model(
        CLIPModel.from_pretrained(tiny_clip_dir), MRSAdapterConfig(bottleneck_dim=8, shared_dim=8)
    )
    randomise_parameters(model, "mrs_adapter")
    model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "zeroshot.json"
    arguments = [str(scenes), "--model", str(tiny_clip_dir), "--templates", *TEMPLATES]
    assert classify_main([*arguments, "--adapter", str(tmp_path / "adapter"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| scenes | 3 | 9 | base |" in printed and "| scenes | 3 | 9 | adapted |" in printed
    saved = json.loads(out.read_text())["results"][0]
    expected, _ = hand_computed(tiny_clip_dir, read_class_folders(scenes))
    truth = torch.tensor(read_class_folders(scenes).labels)
    assert saved["base"]["top1"] == pytest.approx(100.0 * (expected == truth).float().mean().item())
    assert saved["retention_top1"] == pytest.approx(saved["adapted"]["top1"] / saved["base"]["top1"])
    assert "the adapted model keeps" in printed


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--templates", "no placeholder"], "expected exactly one '{}'"),
        (["--class_names", "CLASSES"], "are not class folders"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_clip_dir, scenes, tmp_path, capsys, arguments, message):
    (tmp_path / "classes.json").write_text(json.dumps({"stadium": "a stadium"}))
    arguments = [a.replace("CLASSES", str(tmp_path / "classes.json")) for a in arguments]
    assert classify_main([str(scenes), "--model", str(tiny_clip_dir), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_a_training_run_scores_base_and_adapted_model(tiny_clip_dir, synthetic_dir, scenes, tmp_path):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out", max_steps=2
    )
    overrides = {"evaluation.classification": [str(scenes)], "evaluation.classification_templates": TEMPLATES}
    result = train(load_recipe(recipe, overrides))
    (entry,) = json.loads((tmp_path / "out" / "metrics.json").read_text())["zero_shot_classification"]
    assert entry == result.classification[0]
    dataset = read_class_folders(scenes)
    expected, _ = hand_computed(tiny_clip_dir, dataset)
    assert entry["base"]["top1"] == pytest.approx(
        100.0 * (expected == torch.tensor(dataset.labels)).float().mean().item()
    )
    adapted = PeftModel.from_pretrained(
        CLIPModel.from_pretrained(tiny_clip_dir), tmp_path / "out" / "adapter"
    ).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    assert entry["adapted"]["top1"] == pytest.approx(
        evaluate_class_folders(adapted, processor, dataset, TEMPLATES).top1
    )
    assert entry["retention_top1"] == pytest.approx(entry["adapted"]["top1"] / entry["base"]["top1"])


def test_a_bad_classification_folder_stops_the_run_before_training(tiny_clip_dir, synthetic_dir, tmp_path):
    recipe = write_recipe(
        tmp_path / "recipe.yaml", tiny_clip_dir, synthetic_dir, tmp_path / "out", max_steps=2
    )
    with pytest.raises(RecipeError, match=r"^evaluation.classification: .*not a folder"):
        train(load_recipe(recipe, {"evaluation.classification": [str(tmp_path / "missing")]}))
    assert not (tmp_path / "out" / "metrics.json").exists()
