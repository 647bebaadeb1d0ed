"""The uint8 pixel pipeline: the image cache, the device-side normalisation and augmentation."""

import json
import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPImageProcessorPil

from rsitr_hf.data.augmentation import CropBox, RandomResizedCropFlip, centre_crop_size, crop_resize_flip
from rsitr_hf.data.pixels import DecodedPixels, PixelNormalizer, cached_pixels, image_keys


@pytest.fixture
def image_split(tmp_path):
    """Six RGB, grey and 16-bit images of several sizes, as a split with an ``image`` column of paths."""
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate([(40, 56), (64, 48), (37, 37), (50, 90), (33, 45), (48, 48)]):
        path = tmp_path / "images" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        if index == 4:
            image = PIL.Image.fromarray(rng.integers(0, 4096, (height, width), dtype=np.uint16))
        elif index == 5:
            image = PIL.Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L")
        else:
            image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        image.save(path)
        paths.append(str(path))
    features = datasets.Features({"image": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"image": [{"path": p, "bytes": None} for p in paths]}, features=features
    )


@pytest.fixture
def processor(tiny_clip_dir):
    from transformers import CLIPProcessor

    return CLIPProcessor.from_pretrained(tiny_clip_dir).image_processor


def test_cached_pixels_equal_the_processors_preprocessing(image_split, processor, tmp_path):
    cache = cached_pixels(image_split, processor, tmp_path / "cache")
    rows = [3, 0, 5, 4]
    assert cache.take(rows).dtype == np.uint8 and cache.take(rows).shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(cache.take(rows), DecodedPixels(image_split, processor).take(rows))
    from rsitr_hf.data.images import to_rgb

    reference = processor(images=[to_rgb(image_split[r]["image"]) for r in rows], return_tensors="pt")
    normalised = PixelNormalizer.from_processor(processor)(torch.from_numpy(cache.take(rows)))
    assert normalised.dtype == torch.float32
    # uint8 rounding of one resize at most (PIL resizes in uint8, so here it is exact up to float error)
    torch.testing.assert_close(normalised, reference["pixel_values"], atol=1e-5, rtol=0)


def store_index(cache) -> dict:
    return json.loads((cache.folder / "index.json").read_text())


def test_each_image_is_resized_once_and_again_when_it_or_the_size_changes(image_split, processor, tmp_path):
    root = tmp_path / "cache"
    first = cached_pixels(image_split, processor, root)
    assert [len(shard["keys"]) for shard in store_index(first)["shards"]] == [6]
    # another run, and a validation carve of the same images, reuse the stored rows
    again = cached_pixels(image_split, processor, root)
    part = cached_pixels(image_split.select([4, 1]), processor, root)
    assert [len(shard["keys"]) for shard in store_index(part)["shards"]] == [6]
    np.testing.assert_array_equal(part.take([0, 1]), first.take([4, 1]))
    np.testing.assert_array_equal(again.take(range(6)), first.take(range(6)))
    # another input size: another store
    larger = CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    resized = cached_pixels(image_split, larger, root)
    assert resized.folder != first.folder and resized.take([0]).shape == (1, 3, 48, 48)
    # a changed image file: one new row, with the new pixels; the others are reused
    path = image_split[0]["image"].filename
    stamp = os.stat(path).st_mtime_ns
    PIL.Image.new("RGB", (40, 56), (255, 0, 0)).save(path)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    changed = cached_pixels(image_split, processor, root)
    assert [len(shard["keys"]) for shard in store_index(changed)["shards"]] == [6, 1]
    assert (changed.take([0])[0, 0] == 255).all() and (changed.take([0])[0, 1:] == 0).all()
    np.testing.assert_array_equal(changed.take(range(1, 6)), first.take(range(1, 6)))
    leftovers = [p.name for p in first.folder.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == []  # no temporary files or folders


def test_an_interrupted_build_leaves_the_store_as_it_was(image_split, processor, tmp_path, monkeypatch):
    import rsitr_hf.data.pixels as pixels

    calls = []

    def failing(image_processor, images):
        calls.append(len(images))
        raise KeyboardInterrupt

    monkeypatch.setattr(pixels, "resize_and_crop", failing)
    with pytest.raises(KeyboardInterrupt):
        cached_pixels(image_split, processor, tmp_path / "cache", num_proc=1)
    (store,) = (tmp_path / "cache").iterdir()
    assert calls and sorted(p.name for p in store.iterdir()) == [".lock"]
    monkeypatch.undo()
    rebuilt = cached_pixels(image_split, processor, tmp_path / "cache")
    np.testing.assert_array_equal(
        rebuilt.take(range(6)), DecodedPixels(image_split, processor).take(range(6))
    )


def test_embedded_image_bytes_are_keyed_by_content():
    def split_of(*colours):
        import io

        entries = []
        for colour in colours:
            buffer = io.BytesIO()
            PIL.Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
            entries.append({"path": None, "bytes": buffer.getvalue()})
        return datasets.Dataset.from_dict(
            {"image": entries}, features=datasets.Features({"image": datasets.Image()})
        )

    first, second, third = image_keys(split_of((1, 2, 3), (3, 2, 1), (1, 2, 3)))
    assert first == third != second


def test_crop_resize_flip_of_the_whole_image_is_the_image_or_its_mirror():
    pixels = torch.rand(2, 3, 40, 30) * 255
    out = crop_resize_flip(pixels, [CropBox(0, 0, 40, 30, False), CropBox(0, 0, 40, 30, True)])
    torch.testing.assert_close(out[0], pixels[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(out[1], pixels[1].flip(-1), atol=1e-3, rtol=0)


def test_crop_resize_flip_equals_torchvisions_resized_crop_and_flip():
    """One batched ``grid_sample`` gives what torchvision's ``resized_crop`` (bilinear, no antialiasing: the
    crops only enlarge) then ``horizontal_flip`` give, image by image (skipped without torchvision)."""
    functional = pytest.importorskip("torchvision.transforms.v2.functional")
    from torchvision.transforms import InterpolationMode

    pixels = torch.rand(3, 3, 40, 30) * 255
    boxes = [CropBox(5, 7, 22, 18, False), CropBox(0, 0, 40, 30, True), CropBox(10, 3, 30, 27, True)]
    out = crop_resize_flip(pixels, boxes)
    for image, box, result in zip(pixels, boxes, out, strict=True):
        expected = functional.resized_crop(
            image, box.top, box.left, box.height, box.width, [40, 30], InterpolationMode.BILINEAR,
            antialias=False,
        )  # fmt: skip
        expected = functional.horizontal_flip(expected) if box.flip else expected
        torch.testing.assert_close(result, expected, atol=2e-3, rtol=0)


def test_the_fallback_crop_is_torchvisions():
    """When no drawn box fits, RandomResizedCrop falls back to a centred crop of the allowed aspect ratios:
    torchvision's ``get_params`` with an area it can never draw gives the same box (skipped without it)."""
    transforms = pytest.importorskip("torchvision.transforms")
    ratio = (3 / 4, 4 / 3)
    for height, width in [(224, 224), (100, 300), (300, 100), (120, 150)]:
        top, left, crop_h, crop_w = transforms.RandomResizedCrop.get_params(
            torch.zeros(3, height, width), scale=(2.0, 3.0), ratio=ratio
        )
        assert centre_crop_size(height, width, ratio) == (crop_h, crop_w)
        box = RandomResizedCropFlip(scale=(2.0, 3.0), ratio=ratio).box(0, 0, height, width)
        assert (box.top, box.left, box.height, box.width) == (top, left, crop_h, crop_w)


def test_random_resized_crop_is_drawn_from_seed_epoch_and_index():
    augmentation = RandomResizedCropFlip(seed=5)
    boxes = [augmentation.box(index, epoch, 224, 224) for epoch in range(3) for index in range(200)]
    for box in boxes:
        area = box.height * box.width / 224**2
        assert 0.5 - 0.01 <= area <= 1.0 and 3 / 4 - 0.02 <= box.width / box.height <= 4 / 3 + 0.02
        assert 0 <= box.top <= 224 - box.height and 0 <= box.left <= 224 - box.width
    assert 0.4 < np.mean([box.flip for box in boxes]) < 0.6
    assert augmentation.box(3, 1, 224, 224) == RandomResizedCropFlip(seed=5).box(3, 1, 224, 224)
    assert len({augmentation.box(3, epoch, 224, 224) for epoch in range(20)}) > 15  # new crops each epoch
    assert augmentation.box(3, 1, 224, 224) != RandomResizedCropFlip(seed=6).box(3, 1, 224, 224)
    # the same examples give the same pixels whatever the batch they come in
    pixels = torch.rand(4, 3, 24, 24) * 255
    together = augmentation(pixels, [10, 11, 12, 13], epoch=2)
    alone = torch.cat([augmentation(pixels[i : i + 1], [10 + i], epoch=2) for i in range(4)])
    torch.testing.assert_close(together, alone)
