"""RandAugment(2, 7) on the device: torchvision's magnitudes, one test per operation, per-example draws."""

import math
from collections import Counter

import pytest
import torch

from rsitr_hf.data.preprocessing import ImageBatchTransform
from rsitr_hf.data.randaugment import (
    COLOUR_OPERATIONS,
    OPERATIONS,
    SIGNED,
    RandAugment,
    apply_operations,
    inverse_affine_of,
    operation_magnitude,
    warp_nearest,
)


def image(seed: int = 0, size: int = 9) -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(seed)).float()


def test_magnitudes_at_7_of_31_are_torchvisions():
    magnitude = {name: operation_magnitude(name, 7, 31, 224, 224) for name in OPERATIONS}
    assert magnitude["ShearX"] == magnitude["ShearY"] == pytest.approx(0.07)
    assert magnitude["TranslateX"] == pytest.approx(150 / 331 * 224 * 7 / 30)  # 23.7 px
    assert magnitude["Rotate"] == pytest.approx(7.0)
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        assert magnitude[name] == pytest.approx(0.21)
    assert magnitude["Posterize"] == 7 and magnitude["Solarize"] == pytest.approx(195.5)
    assert magnitude["Identity"] == magnitude["AutoContrast"] == magnitude["Equalize"] == 0


def test_translations_move_whole_pixels_and_fill_with_zero():
    images = image()
    right = warp_nearest(images, [inverse_affine_of("TranslateX", 2.7, 9, 9)] * 2)  # int(2.7) = 2 pixels
    assert torch.equal(right[..., 2:], images[..., :-2]) and not right[..., :2].any()
    up = warp_nearest(images, [inverse_affine_of("TranslateY", -3.0, 9, 9)] * 2)
    assert torch.equal(up[..., :-3, :], images[..., 3:, :]) and not up[..., -3:, :].any()


def test_rotation_is_about_the_centre_and_counter_clockwise():
    images = image()
    quarter = warp_nearest(images, [inverse_affine_of("Rotate", 90.0, 9, 9)] * 2)
    assert torch.equal(quarter, torch.rot90(images, 1, dims=(2, 3)))
    small = warp_nearest(images, [inverse_affine_of("Rotate", 7.0, 9, 9)] * 2)
    assert torch.equal(small[..., 4, 4], images[..., 4, 4])  # the centre stays


@pytest.mark.parametrize("name", ["ShearX", "ShearY"])
def test_shears_keep_rows_or_columns_and_fix_the_top_left_corner(name):
    rows = torch.arange(1.0, 10.0).view(1, 1, 9, 1).expand(1, 3, 9, 9).clone()  # value = row number
    images = rows if name == "ShearX" else rows.transpose(2, 3).clone()
    sheared = warp_nearest(images, [inverse_affine_of(name, 0.3, 9, 9)])
    # pixels move along their row (ShearX) or column (ShearY) only, and more the farther from the corner
    assert torch.equal(torch.where(sheared == 0, images, sheared), images)
    lines = sheared[0, 0] if name == "ShearX" else sheared[0, 0].T
    assert not (lines[0] == 0).any() and (lines[-1] == 0).sum() >= 2


def test_brightness_color_contrast_sharpness_blend_as_torchvision():
    images = image()
    assert torch.equal(COLOUR_OPERATIONS["Brightness"](images, 0.21), (1.21 * images).clamp(0, 255).floor())
    gray = (0.2989 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).floor().unsqueeze(1)
    assert torch.equal(COLOUR_OPERATIONS["Color"](images, -1.0), gray.expand_as(images))
    mean = gray.mean(dim=(1, 2, 3), keepdim=True).floor()
    contrast = COLOUR_OPERATIONS["Contrast"](images, -1.0)
    assert torch.equal(contrast, mean.expand_as(images))
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):  # factor 1 changes nothing
        assert torch.equal(COLOUR_OPERATIONS[name](images, 0.0), images)
    flat = torch.full((1, 3, 6, 6), 77.0)
    assert torch.equal(COLOUR_OPERATIONS["Sharpness"](flat, 0.9), flat)
    sharpened = COLOUR_OPERATIONS["Sharpness"](images, 0.21)
    # the border is the image's (up to the float blend's truncation, which torchvision's uint8 cast shares)
    assert (sharpened[..., 0, :] - images[..., 0, :]).abs().max() <= 1
    assert not torch.equal(sharpened, images)


def test_posterize_solarize_autocontrast_equalize():
    images = image()
    posterized = COLOUR_OPERATIONS["Posterize"](images, 7.0)
    assert torch.equal(posterized, images - images % 2)
    solarized = COLOUR_OPERATIONS["Solarize"](images, 195.5)
    assert torch.equal(solarized, torch.where(images >= 196, 255 - images, images))
    stretched = COLOUR_OPERATIONS["AutoContrast"]((images / 2).floor() + 20, 0.0)
    assert (stretched.amin(dim=(2, 3)) == 0).all() and (stretched.amax(dim=(2, 3)) >= 254).all()
    two_levels = torch.tensor([10.0, 20.0]).repeat_interleave(512).view(1, 1, 32, 32).expand(1, 3, 32, 32)
    equalized = COLOUR_OPERATIONS["Equalize"](two_levels.clone(), 0.0)
    assert set(equalized.unique().tolist()) == {0.0, 255.0}  # torchvision's lookup table for two levels


def test_draws_depend_only_on_seed_epoch_and_example():
    augment = RandAugment(num_ops=2, magnitude=7, seed=3)
    images = torch.rand(6, 3, 16, 16) * 255
    whole = augment(images, [10, 11, 12, 13, 14, 15], epoch=1)
    part = augment(images[[4, 1]], [14, 11], epoch=1)
    assert torch.equal(part, whole[[4, 1]])  # same example, same result, whatever the batch
    assert not torch.equal(augment(images, [10, 11, 12, 13, 14, 15], epoch=2), whole)
    assert torch.equal(whole, whole.round()) and whole.min() >= 0 and whole.max() <= 255
    counts = Counter(name for index in range(2800) for name, _ in augment.draws(index, 0, 16, 16))
    assert set(counts) == set(OPERATIONS) and min(counts.values()) > 300  # uniform: 400 expected each
    signs = [value > 0 for index in range(2000) for name, value in augment.draws(index, 0, 16, 16)
             if name == "Rotate"]  # fmt: skip
    assert 0.35 < sum(signs) / len(signs) < 0.65


def test_each_example_gets_its_own_operation_in_one_batch():
    images = image(size=12)
    operations = [("TranslateX", 3.0), ("Posterize", 6.0)]
    batched = apply_operations(images, operations)
    assert torch.equal(batched[:1], apply_operations(images[:1], operations[:1]))
    assert torch.equal(batched[1:], apply_operations(images[1:], operations[1:]))


def test_the_batch_transform_applies_randaugment_after_the_crop():
    from rsitr_hf.data.augmentation import RandomResizedCropFlip
    from rsitr_hf.data.pixels import PixelNormalizer

    normalizer = PixelNormalizer(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), rescale_factor=1.0)
    crop, rand = RandomResizedCropFlip(seed=0), RandAugment(seed=0)
    pixels = (torch.rand(3, 3, 16, 16) * 255).to(torch.uint8)
    transformed = ImageBatchTransform(normalizer, crop, rand)(pixels, [0, 1, 2], epoch=0)
    assert torch.equal(transformed, rand(crop(pixels.float(), [0, 1, 2], 0), [0, 1, 2], 0))


def torchvision_operation(name: str, value: float, image: torch.Tensor) -> torch.Tensor:
    """What torchvision's ``RandAugment._apply_op`` does for ``name`` with the signed magnitude ``value``
    on a uint8 ``(3, H, W)`` image: its own functional ops, with its arguments."""
    functional = pytest.importorskip("torchvision.transforms.v2.functional")
    from torchvision.transforms import InterpolationMode

    nearest = {"interpolation": InterpolationMode.NEAREST, "fill": 0}
    shear = math.degrees(math.atan(value))
    calls = {
        "Identity": lambda: image,
        "ShearX": lambda: functional.affine(
            image, angle=0.0, translate=[0, 0], scale=1.0, shear=[shear, 0.0], center=[0, 0], **nearest
        ),
        "ShearY": lambda: functional.affine(
            image, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, shear], center=[0, 0], **nearest
        ),
        "TranslateX": lambda: functional.affine(
            image, angle=0.0, translate=[int(value), 0], scale=1.0, shear=[0.0, 0.0], **nearest
        ),
        "TranslateY": lambda: functional.affine(
            image, angle=0.0, translate=[0, int(value)], scale=1.0, shear=[0.0, 0.0], **nearest
        ),
        "Rotate": lambda: functional.rotate(image, value, **nearest),
        "Brightness": lambda: functional.adjust_brightness(image, 1.0 + value),
        "Color": lambda: functional.adjust_saturation(image, 1.0 + value),
        "Contrast": lambda: functional.adjust_contrast(image, 1.0 + value),
        "Sharpness": lambda: functional.adjust_sharpness(image, 1.0 + value),
        "Posterize": lambda: functional.posterize(image, int(value)),
        "Solarize": lambda: functional.solarize(image, value),
        "AutoContrast": lambda: functional.autocontrast(image),
        "Equalize": lambda: functional.equalize(image),
    }
    return calls[name]()


@pytest.mark.parametrize("name", [name for name in OPERATIONS if name != "Identity"])
def test_each_operation_equals_torchvisions_own_on_uint8_images(name):
    """Magnitude bins from 0 to 30, both signs, several image sizes: exactly torchvision's result (skipped
    where torchvision is not installed; rsitr_hf itself does not need it)."""
    pytest.importorskip("torchvision")
    signs = (1, -1) if name in SIGNED else (1,)
    for seed, (height, width) in enumerate([(23, 31), (64, 64), (224, 224), (17, 40)]):
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (3, 3, height, width), generator=generator, dtype=torch.uint8)
        for magnitude in (0, 3, 7, 12, 19, 30):
            for sign in signs:
                value = sign * operation_magnitude(name, magnitude, 31, height, width)
                ours = apply_operations(images.float(), [(name, value)] * len(images))
                theirs = torch.stack([torchvision_operation(name, value, image) for image in images])
                assert torch.equal(ours, theirs.float()), (name, magnitude, sign, (height, width))


def test_randaugment_draws_torchvisions_magnitudes_and_applies_its_operations():
    """A whole RandAugment(2, 7) batch: each image's two drawn operations, applied one after the other by
    torchvision, give our batched result (skipped without torchvision)."""
    pytest.importorskip("torchvision")
    augment = RandAugment(num_ops=2, magnitude=7, seed=1)
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=torch.Generator().manual_seed(3)).float()
    ours = augment(images, list(range(16)), epoch=0)
    for index, image in enumerate(images.to(torch.uint8)):
        for name, value in augment.draws(index, 0, 32, 32):
            image = torchvision_operation(name, value, image)
        assert torch.equal(ours[index], image.float()), augment.draws(index, 0, 32, 32)
