"""Writes ``release_augment_opencv48.npz``: what the HarMA / POSAPL releases' ``RandomAugment`` operations
give on two small images, computed with the libraries the releases pinned (OpenCV 4.8.0, numpy 1.x), for
``tests/test_release_augment.py``. Each operation is called the way ``dataset/randaugment.py`` calls it.

    python -m venv /tmp/cv48 && /tmp/cv48/bin/pip install "numpy<2" "opencv-python-headless==4.8.0.76"
    /tmp/cv48/bin/python tests/data/make_release_augment_reference.py
"""

from pathlib import Path

import cv2
import numpy as np

FILL = (128, 128, 128)
KERNEL = np.ones((3, 3), dtype=np.float32)
KERNEL[1][1] = 5
KERNEL /= 13


def warp(image, matrix):
    height, width = image.shape[:2]
    return cv2.warpAffine(image, matrix, (width, height), borderValue=FILL, flags=cv2.INTER_LINEAR)


def sharpness(image, factor):
    degenerate = cv2.filter2D(image, -1, KERNEL)
    out = image.astype(np.float32)
    degenerate = degenerate.astype(np.float32)[1:-1, 1:-1, :]
    out[1:-1, 1:-1, :] = degenerate + factor * (out[1:-1, 1:-1, :] - degenerate)
    return out.astype(np.uint8)  # no clipping, as the release


def autocontrast(image):
    channels = []
    for channel in cv2.split(image):
        high, low = channel.max(), channel.min()  # numpy uint8 scalars: -low wraps around, as in the release
        if high <= low:
            table = np.arange(256)
        else:
            scale = 255 / (high - low)
            table = np.arange(256) * scale + (-low * scale)
        channels.append(table.clip(0, 255).astype(np.uint8)[channel])
    return cv2.merge(channels)


def equalize(image):
    channels = []
    for channel in cv2.split(image):
        histogram = cv2.calcHist([channel], [0], None, [256], [0, 256])
        step = np.sum(histogram[histogram != 0].reshape(-1)[:-1]) // 255
        if step == 0:
            channels.append(channel)
            continue
        shifted = np.empty_like(histogram)
        shifted[0], shifted[1:] = step // 2, histogram[:-1]
        channels.append((np.cumsum(shifted) // step).clip(0, 255).astype(np.uint8)[channel])
    return cv2.merge(channels)


def main() -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:17, 0:19]
    images = {
        "noise": rng.integers(0, 256, (17, 19, 3), dtype=np.uint8),
        "ramps": np.stack([(x * 13) % 256, (y * 15) % 256, ((x + y) * 7) % 256], -1).astype(np.uint8),
        "dim": rng.integers(40, 180, (17, 19, 3), dtype=np.uint8),  # no channel reaches 0 or 255
    }
    out = {}
    for key, image in images.items():
        height, width = image.shape[:2]
        out[f"{key}/input"] = image
        for value in (0.21, -0.21, 0.07):
            out[f"{key}/ShearX/{value}"] = warp(image, np.float32([[1, value, 0], [0, 1, 0]]))
            out[f"{key}/ShearY/{value}"] = warp(image, np.float32([[1, 0, 0], [value, 1, 0]]))
        for value in (7.0, -7.0, 2.5):
            out[f"{key}/TranslateX/{value}"] = warp(image, np.float32([[1, 0, -value], [0, 1, 0]]))
            out[f"{key}/TranslateY/{value}"] = warp(image, np.float32([[1, 0, 0], [0, 1, -value]]))
        for value in (21.0, -21.0, 90.0):
            out[f"{key}/Rotate/{value}"] = warp(
                image, cv2.getRotationMatrix2D((width / 2, height / 2), value, 1)
            )
        for value in (1.36, 1.9, 0.5):
            out[f"{key}/Brightness/{value}"] = (
                (np.arange(256, dtype=np.float32) * value).clip(0, 255).astype(np.uint8)[image]
            )
            out[f"{key}/Sharpness/{value}"] = sharpness(image, value)
        out[f"{key}/AutoContrast/0"] = autocontrast(image)
        out[f"{key}/Equalize/0"] = equalize(image)
    np.savez_compressed(Path(__file__).with_name("release_augment_opencv48.npz"), **out)


if __name__ == "__main__":
    main()
