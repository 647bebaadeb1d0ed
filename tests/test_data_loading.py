import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import SPLITS_DIR

from rsitr_hf.data import (
    RSITRDataError,
    explode_captions,
    export_imagefolder,
    load_rsitr,
    load_rsitr_hub,
    validate_rsitr,
)
from rsitr_hf.data.seed_layout import read_lines

PLACEHOLDER = io.BytesIO()
PIL.Image.new("RGB", (4, 4), (10, 20, 30)).save(PLACEHOLDER, "PNG")

REAL_COUNTS = {"rsicd": (9828, 1093), "rsitmd": (4291, 452), "ucm": (1890, 210)}


def with_placeholder_images(name: str, root: Path) -> Path:
    """A copy of the real split files of ``name`` with a tiny PNG under every listed file name."""
    source = SPLITS_DIR / f"{name}_precomp"
    data_dir = root / f"{name}_precomp"
    images = data_dir / f"{name}_images"
    images.mkdir(parents=True)
    for path in source.iterdir():
        shutil.copyfile(path, data_dir / path.name)
    for split in ("train", "test"):
        for filename in set(read_lines(source / f"{split}_filename.txt")):
            (images / filename).write_bytes(PLACEHOLDER.getvalue())
    return data_dir


def small_layout(root: Path, num_train: int = 4, num_test: int = 2) -> Path:
    """A hand-made seed layout: train names one per image, test names one per caption."""
    data_dir = root / "toy_precomp"
    images = data_dir / "toy_images"
    images.mkdir(parents=True)
    for split, count in (("train", num_train), ("test", num_test)):
        names = [f"{split}{i}.png" for i in range(count)]
        for name in names:
            PIL.Image.new("RGB", (8, 8), (len(name) * 10, 0, 0)).save(images / name)
        captions = [f"{split} image {i} caption {k}" for i in range(count) for k in range(5)]
        per_line = names if split == "train" else [n for n in names for _ in range(5)]
        (data_dir / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
        (data_dir / f"{split}_filename.txt").write_text("\n".join(per_line) + "\n")
    return data_dir


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_split_files_load_with_published_counts(name, tmp_path):
    data_dir = with_placeholder_images(name, tmp_path)
    dataset = load_rsitr(data_dir, validation_fraction=0.2, seed=0, empty_captions="keep")
    train_val, test = REAL_COUNTS[name]
    assert len(dataset["train"]) + len(dataset["validation"]) == train_val
    assert len(dataset["validation"]) == round(0.2 * train_val)
    assert len(dataset["test"]) == test
    ids = [i for split in dataset.values() for i in split["image_id"]]
    assert len(set(ids)) == len(ids) == train_val + test
    # rows carry their own captions: image_id k of train is line block k of train_caps.txt
    captions = [line.strip() for line in read_lines(data_dir / "train_caps.txt")]
    filenames = read_lines(data_dir / "train_filename.txt")
    for row in dataset["validation"].select(range(5)):
        assert row["captions"] == captions[5 * row["image_id"] : 5 * row["image_id"] + 5]
        assert row["filename"] == filenames[row["image_id"]]
    test_names = read_lines(data_dir / "test_filename.txt")
    assert dataset["test"]["filename"] == test_names[::5]
    assert dataset["test"][0]["image"].mode == "RGB"


def test_validate_names_the_standard_split_or_what_differs(tmp_path, capsys):
    from rsitr_hf.data.validate import compare_with_standard
    from rsitr_hf.tools.validate import main

    data_dir = with_placeholder_images("ucm", tmp_path)
    assert compare_with_standard(data_dir, "ucm") == []
    assert main([str(data_dir), "--headers_only"]) == 0
    assert "this is the standard ucm split (train 1,890 images, test 210 images" in capsys.readouterr().out

    captions = read_lines(data_dir / "test_caps.txt")
    captions[7] = "a different caption"
    (data_dir / "test_caps.txt").write_text("\n".join(captions) + "\n")
    names = read_lines(data_dir / "train_filename.txt")
    renamed = names[0].replace(".", "_x.")
    (data_dir / "ucm_images" / names[0]).rename(data_dir / "ucm_images" / renamed)
    (data_dir / "train_filename.txt").write_text("\n".join([renamed, *names[1:]]) + "\n")
    differences = compare_with_standard(data_dir, "ucm")
    assert differences[0] == f"train: 1 image(s) not in the standard split, e.g. ['{renamed}']"
    assert differences[1] == f"train: 1 image(s) of the standard split missing, e.g. ['{names[0]}']"
    assert differences[2].startswith("test: captions of ") and "test_caps.txt line 6)" in differences[2]
    main([str(data_dir), "--headers_only"])
    assert "differs from the standard ucm split:" in capsys.readouterr().out


def test_rsitmd_empty_captions_are_reported_and_handled_by_policy(tmp_path):
    data_dir = with_placeholder_images("rsitmd", tmp_path)
    with pytest.raises(RSITRDataError, match=r"train_caps.txt, line 9631: empty caption") as error:
        load_rsitr(data_dir)
    assert len(error.value.problems) == 20
    assert "empty_captions='drop'" in str(error.value)
    dropped = load_rsitr(data_dir, validation_fraction=0.0, empty_captions="drop")
    assert len(dropped["train"]) == 4291 - 4
    assert all(all(captions) for captions in dropped["train"]["captions"])


def test_validation_carve_is_deterministic_disjoint_and_optional(tmp_path):
    data_dir = small_layout(tmp_path, num_train=20)
    first = load_rsitr(data_dir, validation_fraction=0.25, seed=3)
    again = load_rsitr(data_dir, validation_fraction=0.25, seed=3)
    other = load_rsitr(data_dir, validation_fraction=0.25, seed=4)
    assert first["validation"]["image_id"] == again["validation"]["image_id"]
    assert first["validation"]["image_id"] != other["validation"]["image_id"]
    assert len(first["validation"]) == 5
    assert not set(first["validation"]["image_id"]) & set(first["train"]["image_id"])
    assert sorted([*first["train"]["image_id"], *first["validation"]["image_id"]]) == list(range(20))
    assert first["test"]["image_id"] == [20, 21]
    none = load_rsitr(data_dir, validation_fraction=0.0)
    assert len(none["validation"]) == 0 and len(none["train"]) == 20


def test_name_is_inferred_or_required(tmp_path):
    data_dir = small_layout(tmp_path)
    renamed = data_dir.rename(tmp_path / "elsewhere")
    with pytest.raises(RSITRDataError, match=r"elsewhere: cannot infer the dataset name.*give the name"):
        load_rsitr(renamed)
    assert len(load_rsitr(renamed, name="toy", validation_fraction=0)["train"]) == 4


def test_explode_captions_keeps_image_ids_and_order(tmp_path):
    dataset = load_rsitr(small_layout(tmp_path), validation_fraction=0)
    pairs = explode_captions(dataset["train"])
    assert len(pairs) == 20
    assert pairs["image_id"] == [i for i in range(4) for _ in range(5)]
    assert pairs["caption"][7] == "train image 1 caption 2"
    assert pairs[7]["image"].size == (8, 8)
    assert pairs[7]["filename"] == "train1.png"
    assert pairs["image_row"] == [i for i in range(4) for _ in range(5)]
    assert pairs["pair_index"] == list(range(20))
    without_images = explode_captions(dataset["train"].remove_columns("image"))
    assert "image" not in without_images.column_names and without_images["caption"] == pairs["caption"]


def test_caption_filename_count_mismatch_names_both_files(tmp_path):
    data_dir = small_layout(tmp_path)
    names = read_lines(data_dir / "train_filename.txt")
    (data_dir / "train_filename.txt").write_text("\n".join(names[:3]) + "\n")
    with pytest.raises(
        RSITRDataError, match=r"train_filename.txt: has 3 lines but train_caps.txt has 20 captions"
    ):
        load_rsitr(data_dir)


def test_caption_count_not_divisible_by_five(tmp_path):
    data_dir = small_layout(tmp_path)
    lines = read_lines(data_dir / "test_caps.txt")
    (data_dir / "test_caps.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(RSITRDataError, match=r"test_caps.txt: has 9 captions, which is not a multiple of 5"):
        load_rsitr(data_dir)


def test_per_caption_filename_blocks_must_repeat_one_name(tmp_path):
    data_dir = small_layout(tmp_path)
    lines = read_lines(data_dir / "test_filename.txt")
    lines[3] = "test1.png"
    (data_dir / "test_filename.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(RSITRDataError, match=r"test_filename.txt, line 4: file name 'test1.png' differs"):
        load_rsitr(data_dir)


def test_missing_image_names_the_file_and_listing_line(tmp_path):
    data_dir = small_layout(tmp_path)
    (data_dir / "toy_images" / "train2.png").unlink()
    with pytest.raises(
        RSITRDataError, match=r"train2.png: image file is missing \(listed in train_filename.txt, line 3\)"
    ):
        load_rsitr(data_dir)


def test_undecodable_image_names_the_file(tmp_path):
    data_dir = small_layout(tmp_path)
    (data_dir / "toy_images" / "test1.png").write_bytes(b"not an image at all")
    with pytest.raises(
        RSITRDataError, match=r"test1.png: image cannot be decoded \(listed in test_filename.txt, line 6\)"
    ):
        load_rsitr(data_dir)


def test_empty_caption_names_the_line(tmp_path):
    data_dir = small_layout(tmp_path)
    lines = read_lines(data_dir / "train_caps.txt")
    lines[11] = "   "
    (data_dir / "train_caps.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        RSITRDataError, match=r"train_caps.txt, line 12: empty caption \(image 'train2.png'\)"
    ):
        load_rsitr(data_dir)


def test_validate_lists_every_problem_at_once(tmp_path):
    data_dir = small_layout(tmp_path)
    (data_dir / "toy_images" / "train0.png").unlink()
    (data_dir / "toy_images" / "train3.png").unlink()
    valid = PIL.Image.new("RGB", (64, 64), (1, 2, 3))
    buffer = io.BytesIO()
    valid.save(buffer, "PNG")
    (data_dir / "toy_images" / "test0.png").write_bytes(buffer.getvalue()[:-200])  # truncated pixels
    lines = read_lines(data_dir / "train_caps.txt")
    lines[0] = ""
    (data_dir / "train_caps.txt").write_text("\n".join(lines) + "\n")
    problems = validate_rsitr(data_dir)
    assert sorted(p.kind for p in problems) == [
        "empty_caption",
        "missing_image",
        "missing_image",
        "unreadable_image",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "rsitr_hf.tools.validate", str(data_dir)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stdout.count("\n") == 4 and "test0.png" in result.stdout
    clean = small_layout(tmp_path / "clean")
    assert validate_rsitr(clean) == []


def test_sixteen_bit_and_single_channel_tiffs_load_as_rgb(tmp_path):
    data_dir = small_layout(tmp_path, num_train=2, num_test=1)
    ramp = (np.arange(16 * 16).reshape(16, 16) * 16).astype(np.uint16)  # 12-bit values up to 4080
    PIL.Image.fromarray(ramp).save(data_dir / "toy_images" / "deep.tif")
    gray = np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1))
    PIL.Image.fromarray(gray, mode="L").save(data_dir / "toy_images" / "gray.tif")
    (data_dir / "train_filename.txt").write_text("deep.tif\ngray.tif\n")
    dataset = load_rsitr(data_dir, validation_fraction=0)
    deep, single = (dataset["train"][i]["image"] for i in range(2))
    assert deep.mode == single.mode == "RGB"
    deep_pixels = np.asarray(deep)[..., 0].astype(int)
    assert deep_pixels.max() == 255 and deep_pixels.min() == 0
    np.testing.assert_allclose(deep_pixels, np.round(ramp / ramp.max() * 255), atol=1)
    np.testing.assert_array_equal(np.asarray(single)[..., 1], gray)


def test_imagefolder_round_trip_through_load_rsitr_hub(tmp_path):
    original = load_rsitr(small_layout(tmp_path), validation_fraction=0.25, seed=1)
    folder = export_imagefolder(original, tmp_path / "imagefolder")
    assert (folder / "train" / "metadata.jsonl").is_file()
    loaded = load_rsitr_hub(str(folder))
    for split in ("train", "validation", "test"):
        left = sorted(
            zip(
                original[split]["image_id"],
                original[split]["filename"],
                original[split]["captions"],
                strict=True,
            )
        )
        right = sorted(
            zip(loaded[split]["image_id"], loaded[split]["filename"], loaded[split]["captions"], strict=True)
        )
        assert left == right
    assert loaded.keys() == original.keys()
    assert loaded["test"].features == original["test"].features
    row = loaded["test"][0]
    original_row = original["test"][list(original["test"]["image_id"]).index(row["image_id"])]
    assert np.array_equal(np.asarray(row["image"]), np.asarray(original_row["image"]))


def test_hub_loader_carves_validation_and_checks_captions(tmp_path):
    original = load_rsitr(small_layout(tmp_path), validation_fraction=0)
    folder = export_imagefolder(original, tmp_path / "imagefolder")
    loaded = load_rsitr_hub(str(folder), validation_fraction=0.5, seed=0)
    assert len(loaded["train"]) == len(loaded["validation"]) == 2
    bad = folder / "test" / "metadata.jsonl"
    bad.write_text(bad.read_text().replace('"captions": ["test image 0 caption 0", ', '"captions": ['))
    with pytest.raises(ValueError, match=r"\[test\]: row \d has 4 captions, expected 5"):
        load_rsitr_hub(str(folder))


def test_published_valid_split_is_the_validation_split(tmp_path, caplog):
    """The layout of arampacha/rsicd (train / valid / test parquet files, columns filename, captions and
    image, splits declared in the README), offline."""
    import logging

    import datasets

    original = load_rsitr(small_layout(tmp_path), validation_fraction=0.25, seed=1)
    repo = tmp_path / "rsicd_copy"
    (repo / "data").mkdir(parents=True)
    for split, published in (("train", "train"), ("validation", "valid"), ("test", "test")):
        rows = original[split].cast_column("image", datasets.Image(decode=False))
        rows = rows.select_columns(["filename", "captions", "image"])
        rows.to_parquet(repo / "data" / f"{published}-00000-of-00001.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: data/{s}-*\n" for s in ("train", "valid", "test"))
        + "---\n"
    )
    assert set(datasets.load_dataset(str(repo))) == {"train", "valid", "test"}
    with caplog.at_level(logging.INFO, logger="rsitr_hf"):
        loaded = load_rsitr_hub(str(repo), validation_fraction=0.5)
    assert "validation split 'valid' (1 images)" in caplog.text
    for split in ("train", "validation", "test"):
        assert sorted(loaded[split]["filename"]) == sorted(original[split]["filename"])
        captions = sorted(map(tuple, original[split]["captions"]))
        assert sorted(map(tuple, loaded[split]["captions"])) == captions
