"""rsitr-audit's candidates and their verification on textured scenes: shifted, cropped, rescaled, rotated and
mirrored copies and overlapping tiles of training images are found by visual words and verified with the
transform that made them; look-alike places of the same kinds are not verified; exclusion uses verified
pairs unless asked to use every candidate."""

import json
from dataclasses import replace
from pathlib import Path

import PIL.ImageEnhance
import pytest

pytest.importorskip("cv2", reason="visual words and verification need OpenCV (pip install -e '.[audit]')")

from rsitr_hf.data.duplicates import (  # noqa: E402
    DEFAULT_WORDS,
    ExtraMethod,
    audit,
    linked_training_files,
)
from rsitr_hf.demo.planted import EDITS, ORIGIN, SIZE, jpeg, place, stored_or_window  # noqa: E402
from rsitr_hf.tools.audit import main as audit_main  # noqa: E402

# edit -> where the copy's origin lies in the training image, the size of its pixel there, its rotation
PLANTED = {
    "shift 64 px": ((64, 64), 1.0, 0.0),
    "crop 50 %": ((74, 37), 181 / SIZE, 0.0),
    "tiles overlapping 50 %": ((128, 0), 1.0, 0.0),
    "zoomed out to 50 % (scale + crop)": ((-35, -53), 362 / SIZE, 0.0),
    "crop 25 % + rotate 90 + JPEG": (None, 222 / SIZE, 90.0),
    "tiles 50 % + flip": (None, 1.0, 0.0),
}
NUM_LOOKALIKES = 6
FADED = 0.3  # contrast of the faint views


def write_split(data_dir: Path, split: str, images: list) -> None:
    names = []
    for index, image in enumerate(images):
        names.append(f"{split}_{index:03d}.png")
        image.save(data_dir / "places_images" / names[-1])
    captions = [f"{split} place {index} caption {k}" for index in range(len(images)) for k in range(5)]
    (data_dir / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
    (data_dir / f"{split}_filename.txt").write_text("\n".join(names) + "\n")


@pytest.fixture(scope="module")
def places_dir(tmp_path_factory) -> Path:
    """Training image k (k < 6) is the window of place k; test image k its copy by the k-th edit; the
    rest are other places of the same kinds, drawn at the image size."""
    data_dir = tmp_path_factory.mktemp("audit") / "places_precomp"
    (data_dir / "places_images").mkdir(parents=True)
    places = [place(k, "textured") for k in range(len(PLANTED))]
    train = [window(ORIGIN, ORIGIN, SIZE) for window in places]
    train += [place(100 + k, "textured", SIZE)(0, 0, SIZE) for k in range(NUM_LOOKALIKES)]
    write_split(data_dir, "train", train)
    test = [
        EDITS[edit](stored_or_window(window, data_dir / "places_images" / f"train_{k:03d}.png"))
        for k, (edit, window) in enumerate(zip(PLANTED, places, strict=True))
    ]
    test += [place(200 + k, "textured", SIZE)(0, 0, SIZE) for k in range(NUM_LOOKALIKES)]
    write_split(data_dir, "test", test)
    return data_dir


@pytest.fixture(scope="module")
def audited(places_dir):
    return audit([places_dir])


def test_every_copy_is_verified_with_its_transform_and_no_lookalike_is(audited):
    planted = {(f"train_{k:03d}.png", f"test_{k:03d}.png"): edit for k, edit in enumerate(PLANTED)}
    verified = {(pair.a.file_name, pair.b.file_name): pair for pair in audited.pairs if pair.verified}
    assert set(verified) == set(planted)
    for files, edit in planted.items():
        pair = verified[files]
        assert "visual_words" in pair.evidence and "perceptual" not in pair.evidence, edit
        shift, scale, rotation = PLANTED[edit]
        found = pair.geometry
        assert found.inliers >= 20 and found.scale == pytest.approx(scale, rel=0.03), edit
        assert abs(abs(found.rotation) - rotation) < 1.0 and found.mirrored == edit.endswith("flip"), edit
        if shift is not None:
            assert found.shift == pytest.approx(shift, abs=3.0), edit
    tiles = verified["train_002.png", "test_002.png"].geometry
    assert tiles.overlap == pytest.approx(0.5, abs=0.02)
    candidates_only = [pair for pair in audited.pairs if not pair.verified]
    assert all(pair.geometry.inliers < 20 or not pair.geometry.duplicate for pair in candidates_only)


def test_the_manifest_records_verification_and_exclusion_uses_verified_pairs(audited):
    manifest = json.loads(json.dumps(audited.manifest()))
    assert manifest["verification"]["min_inliers"] == 20
    assert manifest["methods"]["visual_words"]["margin"] == DEFAULT_WORDS.margin
    shifted = next(pair for pair in manifest["image_pairs"] if pair["b"]["file"] == "test_000.png")
    assert shifted["verified"] is True
    assert shifted["geometry"]["shift"] == pytest.approx([64, 64], abs=3.0)
    assert set(shifted["geometry"]) == {
        "matches",
        "inliers",
        "shift",
        "scale",
        "rotation",
        "mirrored",
        "overlap",
    }
    linked = linked_training_files(manifest, "places", ["places"])
    assert linked == {f"train_{k:03d}.png" for k in range(len(PLANTED))}
    every_candidate = set()
    for pair in manifest["image_pairs"]:
        for mine, other in ((pair["a"], pair["b"]), (pair["b"], pair["a"])):
            if (mine["split"], other["split"]) == ("train", "test"):
                every_candidate.add(mine["file"])
    assert linked_training_files(manifest, "places", ["places"], unverified=True) == every_candidate


def test_workers_and_settings_change_how_not_what(places_dir, audited):
    in_two = audit([places_dir], workers=2)
    assert in_two.manifest() == audited.manifest()
    without_words = audit([places_dir], words=None)
    assert not any("visual_words" in pair.evidence for pair in without_words.pairs)
    assert {(pair.a.file_name, pair.b.file_name) for pair in without_words.pairs if pair.verified} == set()
    strict = audit([places_dir], words=replace(DEFAULT_WORDS, margin=100.0))
    assert not any("visual_words" in pair.evidence for pair in strict.pairs)


def test_the_command_reports_candidates_and_verified_and_draws_the_overlap(places_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    assert audit_main([str(places_dir), "--output_dir", str(out), "--workers", "1", "--grid_pairs", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| split a | split b | exact | perceptual | visual_words | candidates | verified |" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| places/train | places/test |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")][2:]
    assert cells[0] == "0" and cells[1] == "0" and int(cells[3]) >= 6 and cells[4] == "6"
    assert json.loads((out / "audit.json").read_text()) == json.loads(
        json.dumps(audit([places_dir]).manifest())
    )
    assert (out / "pairs.png").stat().st_size > 0


def test_a_further_methods_own_candidates_are_verified_only_when_their_shared_words_agree(places_dir):
    def every_train_test_pair(images):
        return [
            (i, j, 1.0)
            for i, a in enumerate(images)
            for j, b in enumerate(images)
            if i < j and (a.split, b.split) == ("train", "test")
        ]

    oracle = ExtraMethod("oracle", {}, every_train_test_pair)
    silent_words = replace(DEFAULT_WORDS, margin=100.0)  # the words propose nothing themselves
    found = audit([places_dir], max_distance=None, extra=[oracle], words=silent_words)
    planted = {(f"train_{k:03d}.png", f"test_{k:03d}.png") for k in range(len(PLANTED))}
    assert len(found.pairs) == (len(PLANTED) + NUM_LOOKALIKES) ** 2
    for pair in found.pairs:
        assert set(pair.evidence) == {"oracle"}
        copy = (pair.a.file_name, pair.b.file_name) in planted
        assert (pair.shared_words >= silent_words.min_agreeing) == copy
        assert pair.verified == copy and (pair.geometry is not None) == copy  # the others are not verified
    record = next(pair for pair in found.manifest()["image_pairs"] if not pair["verified"])
    assert record["geometry"] is None and record["shared_words"] < silent_words.min_agreeing


def test_a_faint_view_is_checked_with_its_faint_corners():
    farmland = place(4, "textured")  # weakly textured fields
    faded = [
        jpeg(PIL.ImageEnhance.Contrast(farmland(ORIGIN + shift, ORIGIN + shift, SIZE)).enhance(FADED))
        for shift in (0, 32)
    ]
    original, copy = (DEFAULT_WORDS.words(image) for image in faded)
    assert (~original.checked[original.ranked]).all()  # too few strong corners to check with
    assert original.ranking().size == original.ranked.sum() * DEFAULT_WORDS.tables
    assert DEFAULT_WORDS.agreeing(original, copy) >= DEFAULT_WORDS.min_agreeing
    strong_only = replace(DEFAULT_WORDS, min_strong=0)
    original, copy = (strong_only.words(image) for image in faded)
    assert strong_only.agreeing(original, copy) < DEFAULT_WORDS.min_agreeing
