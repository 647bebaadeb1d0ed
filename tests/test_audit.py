"""rsitr-audit on a synthetic dataset with planted duplicates: edited copies of training images in its test
split, among distinct look-alike scenes of the same generator."""

import json
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from rsitr_hf.data.duplicates import (
    DIHEDRAL,
    PERCEPTUAL_MAX_DISTANCE,
    Fingerprints,
    caption_overlaps,
    fingerprint,
    image_pairs,
    perceptual_pairs,
    read_images,
)
from rsitr_hf.demo.planted import jitter, jpeg
from rsitr_hf.demo.synthetic import make_example
from rsitr_hf.search.ann import ANNConfig
from rsitr_hf.search.duplicates import close_pairs
from rsitr_hf.tools.audit import main as audit_main

NUM_TRAIN, NUM_LOOKALIKES = 24, 12


# test image k is an edited copy of training image k (the perceptual method must find each)
PLANTED = {
    "copy": lambda image: image,
    "jpeg": jpeg,
    "resize": lambda image: image.resize((96, 96)),
    "colour jitter": jitter,
    "rotate 90": lambda image: image.transpose(PIL.Image.Transpose.ROTATE_90),
    "flip": lambda image: image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT),
}
PLANTED_CAPTION = (
    "  A GREEN meadow -- with a river; and TREES!! "  # equals "a green meadow with a river and trees"
)


def write_split(data_dir: Path, split: str, examples: list[tuple[PIL.Image.Image, list[str]]], suffix: str):
    names = []
    for index, (image, _) in enumerate(examples):
        names.append(f"{split}_{index:03d}.{suffix}")
        image.save(data_dir / "plant_images" / names[-1])
    captions = [caption for _, image_captions in examples for caption in image_captions]
    (data_dir / f"{split}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    (data_dir / f"{split}_filename.txt").write_text("\n".join(names) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("audit") / "plant_precomp"
    (data_dir / "plant_images").mkdir(parents=True)
    train = [make_example(0, "train", index, image_size=128)[:2] for index in range(NUM_TRAIN)]
    train[0][1][2] = "a green meadow with a river and trees"
    test = [(edit(train[k][0]), make_example(1, "test", k)[1]) for k, edit in enumerate(PLANTED.values())]
    test += [make_example(0, "test", index, image_size=128)[:2] for index in range(NUM_LOOKALIKES)]
    test[-1][1][0] = PLANTED_CAPTION
    write_split(data_dir, "train", train, "tif")
    write_split(data_dir, "test", test, "png")  # the exact copy is a PNG of a TIFF: same pixels, other bytes
    return data_dir


def found_by(pairs, method: str) -> set[tuple[str, str]]:
    return {(pair.a.file_name, pair.b.file_name) for pair in pairs if method in pair.evidence}


def test_every_planted_duplicate_is_found_and_no_lookalike_is_flagged(planted_dir):
    images, has_images = read_images(planted_dir)
    assert has_images and len(images) == NUM_TRAIN + len(PLANTED) + NUM_LOOKALIKES
    pairs = image_pairs(fingerprint(images))
    planted = {(f"train_{k:03d}.tif", f"test_{k:03d}.png") for k in range(len(PLANTED))}
    assert found_by(pairs, "exact") == {("train_000.tif", "test_000.png")}
    assert found_by(pairs, "perceptual") == planted  # each edit found, nothing else proposed
    rotated = next(pair for pair in pairs if pair.b.file_name == "test_004.png")
    assert rotated.transform in ("rotate_90", "rotate_270")
    assert all(pair.evidence["perceptual"] <= PERCEPTUAL_MAX_DISTANCE for pair in pairs)


def test_perceptual_pairs_are_every_pair_within_the_distance_under_its_best_transform():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, (300, len(DIHEDRAL), 4), dtype=np.uint64)
    for k in range(40):  # near copies: another image's hashes, transformed, with bits changed
        near = hashes[k][rng.permutation(len(DIHEDRAL))]
        near[:, 0] ^= np.uint64((1 << int(rng.integers(0, 40))) - 1)  # 0 to 39 bits
        hashes[200 + k] = near
    upright = hashes[:, None, None, 0, :]
    distances = np.bitwise_count(upright ^ hashes[None]).sum(-1)  # (i, j, transform)
    expected = [
        (i, j, int(distances[i, j].min()), int(distances[i, j].argmin()))
        for i, j in zip(*np.nonzero(distances.min(-1) <= PERCEPTUAL_MAX_DISTANCE), strict=True)
        if i < j
    ]
    found = perceptual_pairs(Fingerprints([], [], hashes))
    assert sorted(found) == expected and 20 < len(found) <= 40


def test_captions_are_compared_after_normalisation(planted_dir):
    images, _ = read_images(planted_dir)
    overlaps = {(overlap.a, overlap.b): overlap for overlap in caption_overlaps(images)}
    assert set(overlaps) == {
        ("plant/train", "plant/train"),
        ("plant/train", "plant/test"),
        ("plant/test", "plant/test"),
    }

    def words(caption: str) -> str:
        return " ".join(re.sub(r"[^a-z0-9]", " ", caption.lower()).split())

    by_split = {
        split: {words(c) for image in images if image.split == split for c in image.captions}
        for split in ("train", "test")
    }
    shared = by_split["train"] & by_split["test"]
    assert "a green meadow with a river and trees" in shared
    assert overlaps["plant/train", "plant/test"].shared_captions == len(shared)
    holders = [
        image for image in images if image.split == "test" and {words(c) for c in image.captions} & shared
    ]
    assert overlaps["plant/train", "plant/test"].images_b == len(holders)


def test_the_command_writes_report_manifest_and_grid(planted_dir, tmp_path, capsys):
    captions_only = tmp_path / "textonly_precomp"
    captions_only.mkdir()
    for name in ("train_caps.txt", "train_filename.txt", "test_caps.txt", "test_filename.txt"):
        (captions_only / name).write_bytes((planted_dir / name).read_bytes())
    out = tmp_path / "audit"
    arguments = [str(planted_dir), str(captions_only), "--output_dir", str(out), "--candidates", "perceptual"]
    assert audit_main([*arguments, "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "audit.md").read_text()
    assert (
        "| plant/train | plant/test | 1 | 6 | 6 | 6 |" in printed
    )  # exact, perceptual, candidates, verified
    assert "| textonly | 24 | 18 | no (no image folder: captions only) |" in printed
    manifest = json.loads((out / "audit.json").read_text())
    assert len(manifest["image_pairs"]) == len(PLANTED) and "visual_words" not in manifest["methods"]
    assert manifest["image_pairs"][0] == {
        "a": {"dataset": "plant", "split": "train", "file": "train_000.tif"},
        "b": {"dataset": "plant", "split": "test", "file": "test_000.png"},
        "evidence": {"exact": 0.0, "perceptual": 0.0},
        "transform": "none",
        "verified": True,
        "geometry": None,  # the same pixels
        "shared_words": None,  # looked at for the embedding method's own candidates only
    }
    rotated = manifest["image_pairs"][4]["geometry"]  # verified with the quarter turn that made it
    assert manifest["image_pairs"][4]["verified"] and abs(abs(rotated["rotation"]) - 90) < 1
    textonly = next(
        o for o in manifest["caption_overlaps"] if o["a"] == "plant/test" and o["b"] == "textonly/test"
    )
    assert textonly["shared_captions"] > 0 and textonly["images_a"] == textonly["images_b"] == 18
    with PIL.Image.open(out / "pairs.png") as grid:
        assert grid.height > grid.width  # one row per pair


def test_a_folder_that_is_not_a_dataset_is_one_line_and_exit_2(tmp_path, capsys):
    assert audit_main([str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "expected a folder named '<name>_precomp'" in error


def test_close_pairs_are_every_pair_above_the_cosine_through_faiss_or_exactly():
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(300, 16, generator=generator), dim=-1)
    embeddings[7] = F.normalize(embeddings[3] + 0.05 * torch.randn(16, generator=generator), dim=0)
    embeddings[200] = embeddings[100]
    cosine = embeddings @ embeddings.T
    expected = {(i, j) for i in range(300) for j in range(i + 1, 300) if cosine[i, j] >= 0.95}
    assert {(3, 7), (100, 200)} <= expected
    exact = close_pairs(embeddings, min_cosine=0.95, neighbours=299)
    assert {(i, j) for i, j, _ in exact} == expected
    assert all(score == pytest.approx(cosine[i, j].item(), abs=1e-6) for i, j, score in exact)
    through_faiss = close_pairs(embeddings, min_cosine=0.95, neighbours=299, config=ANNConfig(kind="flat"))
    assert {(i, j) for i, j, _ in through_faiss} == expected


def test_the_command_adds_the_embedding_method_with_a_model(planted_dir, tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    arguments = [str(planted_dir), "--output_dir", str(out), "--model", str(tiny_clip_dir), "--workers", "1"]
    assert audit_main([*arguments, "--candidates", "perceptual", "--min_cosine", "0.9999"]) == 0
    assert "| split a | split b | exact | perceptual | embedding | candidates | verified |" in (
        capsys.readouterr().out
    )
    manifest = json.loads((out / "audit.json").read_text())
    assert manifest["methods"]["embedding"]["min_cosine"] == 0.9999
    copy = manifest["image_pairs"][0]
    assert copy["b"]["file"] == "test_000.png" and copy["evidence"]["embedding"] >= 0.9999
