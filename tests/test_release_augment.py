"""The HarMA / POSAPL releases' RandomAugment: its operation list and magnitudes, each operation equal to
what OpenCV 4.8 and numpy give in the release (reference outputs made by
tests/data/make_release_augment_reference.py), its draws, batching, and how recipes choose it; and the
releases' evaluation resize."""

from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from rsitr_hf.data.pixels import input_shape, resize_and_crop, resized_without_crop
from rsitr_hf.data.randaugment import RandAugment
from rsitr_hf.data.release_augment import (
    GEOMETRIC,
    OPERATIONS,
    PIXEL_OPERATIONS,
    ReleaseRandomAugment,
    apply_operations,
    forward_matrix,
    operation_magnitude,
    sharpness,
    warp_affine_bilinear,
)
from rsitr_hf.training.data import image_transform, load_processor
from rsitr_hf.training.recipe import RecipeError, load_recipe

REFERENCE = np.load(Path(__file__).parent / "data" / "release_augment_opencv48.npz")
CASES = [name for name in REFERENCE.files if not name.endswith("/input")]


def test_the_release_operations_and_their_magnitudes_at_7():
    assert OPERATIONS == (
        "Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
        "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    )  # fmt: skip
    at_7 = {name: operation_magnitude(name, 7) for name in OPERATIONS}
    assert at_7["Rotate"] == pytest.approx(21.0) and at_7["ShearX"] == at_7["ShearY"] == pytest.approx(0.21)
    assert at_7["TranslateX"] == at_7["TranslateY"] == pytest.approx(7.0)
    assert at_7["Brightness"] == at_7["Sharpness"] == pytest.approx(1.36)
    assert at_7["Identity"] == at_7["AutoContrast"] == at_7["Equalize"] == 0.0


@pytest.mark.parametrize("case", CASES)
def test_each_operation_equals_opencv_48_as_the_release_calls_it(case):
    key, name, argument = case.split("/")
    image = torch.from_numpy(REFERENCE[f"{key}/input"]).permute(2, 0, 1)[None].float()
    height, width = image.shape[-2:]
    if name in GEOMETRIC:
        got = warp_affine_bilinear(image, [forward_matrix(name, float(argument), height, width)], 128.0)
    else:
        got = PIXEL_OPERATIONS[name](image, float(argument))
    expected = torch.from_numpy(REFERENCE[case].astype(np.float32)).permute(2, 0, 1)[None]
    assert torch.equal(got, expected)


def test_sharpness_wraps_around_as_the_release_uint8_cast():
    image = torch.zeros(1, 3, 3, 3)
    image[..., 1, 1] = 255.0
    # smoothed centre: round(255 * 5 / 13) = 98; 98 + 1.36 * (255 - 98) = 311.52 -> 311 -> 311 - 256 = 55
    assert sharpness(image, 1.36)[0, :, 1, 1].tolist() == [55.0, 55.0, 55.0]


def test_draws_are_uniform_over_the_ten_half_applied_and_fixed_per_seed_epoch_and_index():
    augment = ReleaseRandomAugment(num_ops=2, magnitude=7, seed=3)
    draws = [augment.draws(index, epoch=0) for index in range(4000)]
    slots = [drawn for pair in draws for drawn in pair]
    applied = [drawn for drawn in slots if drawn is not None]
    assert len(applied) / len(slots) == pytest.approx(0.5, abs=0.02)
    counts = Counter(name for name, _ in applied)
    assert set(counts) == set(OPERATIONS) and max(counts.values()) / min(counts.values()) < 1.25
    rotations = [value for name, value in applied if name == "Rotate"]
    assert all(abs(value) == pytest.approx(21.0) for value in rotations)
    assert sum(value > 0 for value in rotations) / len(rotations) == pytest.approx(0.5, abs=0.07)
    assert all(value == pytest.approx(1.36) for name, value in applied if name == "Brightness")
    assert augment.draws(5, epoch=2) == ReleaseRandomAugment(seed=3).draws(5, epoch=2)
    assert [augment.draws(i, epoch=1) for i in range(20)] != draws[:20]


def test_a_batch_is_each_image_augmented_alone():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 20, 24), generator=generator).float()
    augment = ReleaseRandomAugment(seed=1)
    batch = augment(images, list(range(12)), epoch=4)
    for index in range(12):
        alone = images[index : index + 1]
        for drawn in augment.draws(index, epoch=4):
            alone = apply_operations(alone, [drawn])
        assert torch.equal(batch[index : index + 1], alone)
    assert not torch.equal(batch, images) and torch.equal(batch, batch.round())


def test_recipes_choose_the_release_or_torchvision_randaugment(tiny_clip_dir):
    recipe = load_recipe(None, {"base_model": str(tiny_clip_dir), "data.randaugment": [2, 7]})
    processor = load_processor(recipe)
    assert isinstance(image_transform(recipe, processor).rand_augment, ReleaseRandomAugment)
    recipe.data.randaugment_kind = "torchvision"
    assert isinstance(image_transform(recipe, processor).rand_augment, RandAugment)
    recipe.data.randaugment, recipe.data.randaugment_kind = [2, 12], "release"
    with pytest.raises(RecipeError, match=r"data.randaugment: .*magnitude 0-10 \(release\)"):
        image_transform(recipe, processor)
    for name in ("posapl_rsitmd", "posapl_rsicd", "harma_rsitmd", "harma_rsicd_georsclip"):
        paper = load_recipe(Path(__file__).parents[1] / "hub_configs" / f"{name}.yaml")
        assert (paper.data.randaugment, paper.data.randaugment_kind) == ([2, 7], "release")
        assert paper.data.image_preprocessing == "paper"


def test_paper_preprocessing_resizes_without_a_crop(tiny_clip_dir):
    recipe = load_recipe(None, {"base_model": str(tiny_clip_dir), "data.image_preprocessing": "paper"})
    processor = load_processor(recipe).image_processor
    own = load_processor(load_recipe(None, {"base_model": str(tiny_clip_dir)})).image_processor
    assert input_shape(processor) == input_shape(own) == (3, 32, 32) and not processor.do_center_crop
    wide = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8))
    plain = np.asarray(wide.resize((32, 32), PIL.Image.BICUBIC)).transpose(2, 0, 1).astype(int)
    assert np.abs(resize_and_crop(processor, [wide])[0].astype(int) - plain).max() <= 1  # the whole image
    assert np.abs(resize_and_crop(own, [wide])[0].astype(int) - plain).mean() > 10  # a centre crop
    square = wide.resize((50, 50))
    assert (
        np.abs(resize_and_crop(processor, [square]).astype(int) - resize_and_crop(own, [square])).max() <= 1
    )
    assert resized_without_crop(processor).size == processor.size
