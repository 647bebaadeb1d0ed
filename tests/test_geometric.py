"""Geometric verification of duplicate candidates (rsitr_hf.data.geometric): shifted, cropped, rescaled,
rotated, mirrored, re-encoded copies and overlapping tiles of one scene are verified with the transform
that relates them; different scenes drawn the same way (look-alikes) are not."""

import io

import PIL.Image
import PIL.ImageEnhance
import pytest

pytest.importorskip("cv2", reason="geometric verification needs OpenCV (pip install -e '.[audit]')")

from rsitr_hf.data.geometric import GeometricVerifier  # noqa: E402
from rsitr_hf.demo.textured import aerial_scene  # noqa: E402

TILE = 384


def jpeg(image: PIL.Image.Image, quality: int = 40) -> PIL.Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return PIL.Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


SCENE = aerial_scene(0)
ORIGINAL = SCENE.crop((0, 0, TILE, TILE))
# edit -> (the copy, where its origin lies in the original, its pixel's size there, rotation, overlap)
EDITS = {
    "shift_4": (SCENE.crop((4, 0, 4 + TILE, TILE)), (4, 0), 1.0, 0.0, 0.99),
    "shift_64": (SCENE.crop((64, 64, 64 + TILE, 64 + TILE)), (64, 64), 1.0, 0.0, 0.69),
    "crop_half_of_the_area": (SCENE.crop((0, 0, 272, 272)), (0, 0), 1.0, 0.0, 1.0),
    "crop_rescaled": (SCENE.crop((96, 96, 368, 368)).resize((TILE, TILE)), (96, 96), 272 / TILE, 0.0, 1.0),
    "tiles_overlapping_50": (SCENE.crop((192, 0, 192 + TILE, TILE)), (192, 0), 1.0, 0.0, 0.5),
    "tiles_overlapping_25": (SCENE.crop((288, 0, 288 + TILE, TILE)), (288, 0), 1.0, 0.0, 0.25),
    "half_size": (ORIGINAL.resize((TILE // 2, TILE // 2)), (0, 0), 2.0, 0.0, 1.0),
    "jpeg_and_colour": (jpeg(PIL.ImageEnhance.Color(ORIGINAL).enhance(1.4)), (0, 0), 1.0, 0.0, 1.0),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_copy_is_verified_with_the_transform_that_made_it(edit):
    copy, shift, scale, rotation, overlap = EDITS[edit]
    found = GeometricVerifier().verify(ORIGINAL, copy)
    assert found.duplicate and found.inliers >= 20 and not found.mirrored
    assert found.shift == pytest.approx(shift, abs=2.0)
    assert found.scale == pytest.approx(scale, rel=0.02)  # the copy's pixels in the original's
    assert found.rotation == pytest.approx(rotation, abs=0.5)
    assert found.overlap == pytest.approx(overlap, abs=0.02)


def test_rotated_and_mirrored_copies_are_verified():
    verifier = GeometricVerifier()
    quarter = verifier.verify(ORIGINAL, ORIGINAL.rotate(90))
    assert quarter.duplicate and abs(abs(quarter.rotation) - 90) < 0.5 and quarter.overlap > 0.98
    tilted = (
        SCENE.crop((0, 0, 420, 420))
        .rotate(10, resample=PIL.Image.Resampling.BILINEAR)
        .crop((18, 18, 402, 402))
    )
    found = verifier.verify(ORIGINAL, tilted)
    assert found.duplicate and abs(abs(found.rotation) - 10) < 0.5
    mirrored = verifier.verify(ORIGINAL, ORIGINAL.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT))
    assert mirrored.duplicate and mirrored.mirrored and mirrored.overlap > 0.98


def test_look_alikes_are_not_verified_nor_are_tiles_that_do_not_overlap():
    verifier = GeometricVerifier()
    for seed in range(1, 9):  # other places drawn the same way
        found = verifier.verify(ORIGINAL, aerial_scene(seed).crop((0, 0, TILE, TILE)))
        assert not found.duplicate and found.inliers < verifier.min_inliers // 2
    beside = verifier.verify(ORIGINAL, SCENE.crop((TILE, TILE, 2 * TILE, 2 * TILE)))  # the next tile
    assert not beside.duplicate
    blank = verifier.verify(ORIGINAL, PIL.Image.new("RGB", (TILE, TILE), (90, 110, 70)))
    assert not blank.duplicate and blank.inliers == 0
