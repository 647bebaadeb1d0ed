"""rsitr-audit's duplicate finding on a synthetic dataset with planted duplicates, on this machine.

    python benchmarks/bench_audit.py [--num_images 20000] [--planted_per_edit 25] [--output_dir DIR]
                                     [--model BASE [--adapter DIR] [--min_cosine 0.95]]

Writes a seed-layout dataset of ``--num_images`` synthetic 256-px scenes (JPEG, as RSICD ships; the demo's
generator, seeded): a training split and a test split made of edited copies of training images (each of
:data:`EDITS`, ``--planted_per_edit`` times) and distinct look-alike scenes of the same generator. Reports,
for the exact and the perceptual method (and, with ``--model``, the embedding method), the share of each
edit's planted pairs found (recall) and the pairs flagged that were not planted (false positives), and the
time to fingerprint every image and to compare every pair.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import PIL.Image
import PIL.ImageEnhance

from rsitr_hf.data.duplicates import fingerprint, image_pairs, read_images
from rsitr_hf.demo.synthetic import make_example
from rsitr_hf.evaluation.inference import RetrievalModel
from rsitr_hf.search.duplicates import MIN_COSINE, embedding_method

SIZE = 256


def jpeg(image: PIL.Image.Image, quality: int = 70) -> PIL.Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return PIL.Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def jitter(image: PIL.Image.Image) -> PIL.Image.Image:
    brighter = PIL.ImageEnhance.Brightness(PIL.ImageEnhance.Color(image).enhance(1.3)).enhance(1.15)
    return PIL.ImageEnhance.Contrast(brighter).enhance(0.85)


def crop(image: PIL.Image.Image, share: float) -> PIL.Image.Image:
    """A crop losing ``share`` of the width on the left and half that on the top, resized back."""
    margin = int(SIZE * share)
    return image.crop((margin, margin // 2, SIZE, SIZE)).resize((SIZE, SIZE))


def shift(image: PIL.Image.Image, pixels: int) -> PIL.Image.Image:
    """The scene moved ``pixels`` right and down, the uncovered border filled from the edge."""
    moved = image.crop((-pixels, -pixels, SIZE - pixels, SIZE - pixels))
    moved.paste(image.crop((0, 0, SIZE, pixels)).resize((SIZE, pixels)), (0, 0))
    return moved


EDITS = {
    "copy (other format)": lambda image: image,
    "JPEG quality 70": jpeg,
    "resize to 75 %": lambda image: image.resize((SIZE * 3 // 4, SIZE * 3 // 4)),
    "colour jitter": jitter,
    "rotate 90": lambda image: image.transpose(PIL.Image.Transpose.ROTATE_90),
    "flip": lambda image: image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT),
    "shift 4 px": lambda image: shift(image, 4),
    "crop 2 %": lambda image: crop(image, 0.02),
    "crop 5 %": lambda image: crop(image, 0.05),
    "rotate + jitter + JPEG": lambda image: jpeg(jitter(image.transpose(PIL.Image.Transpose.ROTATE_270))),
}


def write_dataset(root: Path, num_images: int, planted_per_edit: int) -> tuple[Path, dict[str, str]]:
    """The dataset and ``{test file: edit}`` of the planted copies (test image k copies training image k)."""
    data_dir = root / "bench_precomp"
    (data_dir / "bench_images").mkdir(parents=True)
    planted = [edit for edit in EDITS for _ in range(planted_per_edit)]
    num_test = max(len(planted), num_images // 10)
    num_train = num_images - num_test
    edits_of = {}
    for split, count in (("train", num_train), ("test", num_test)):
        names, captions = [], []
        for index in range(count):
            name = f"{split}_{index:05d}.jpg"
            if split == "test" and index < len(planted):
                with PIL.Image.open(data_dir / "bench_images" / source_of(name)) as source:
                    image = EDITS[planted[index]](source.convert("RGB"))
                name = name.replace(".jpg", ".png")  # lossless, so the copy keeps its pixels
                edits_of[name] = planted[index]
            else:
                image = make_example(0, split, index, image_size=SIZE)[0]
            image.save(data_dir / "bench_images" / name, quality=95)
            names.append(name)
            captions += [f"scene {split} {index} caption {k}" for k in range(5)]
        (data_dir / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
        (data_dir / f"{split}_filename.txt").write_text("\n".join(names) + "\n")
    return data_dir, edits_of


def source_of(test_file: str) -> str:
    """The training image that the planted test image ``test_file`` copies."""
    return test_file.replace("test", "train", 1).replace(".png", ".jpg")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_images", type=int, default=20_000)
    parser.add_argument("--planted_per_edit", type=int, default=25)
    parser.add_argument("--output_dir", default=None, help="keep the dataset and results.json here")
    parser.add_argument("--model", default=None, help="also the embedding method with this base CLIP")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter on --model")
    parser.add_argument("--min_cosine", type=float, default=MIN_COSINE)
    args = parser.parse_args()
    extra = (
        [embedding_method(RetrievalModel(args.model, args.adapter), args.min_cosine)] if args.model else []
    )
    methods = ("exact", "perceptual", *(["embedding"] if extra else []))
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="bench-audit-"))
    started = time.perf_counter()
    data_dir, edits_of = write_dataset(root, args.num_images, args.planted_per_edit)
    written = time.perf_counter() - started
    images, _ = read_images(data_dir)
    started = time.perf_counter()
    prints = fingerprint(images)
    fingerprinted = time.perf_counter() - started
    started = time.perf_counter()
    pairs = image_pairs(prints, extra=extra)
    compared = time.perf_counter() - started

    def is_planted(pair) -> bool:
        return pair.b.file_name in edits_of and pair.a.file_name == source_of(pair.b.file_name)

    results = {"num_images": len(images), "seconds": {"fingerprint": fingerprinted, "compare": compared}}
    print(f"{len(images)} images ({written:.0f} s to write them)")
    print("| edit | " + " | ".join(methods) + " |\n|---" + "|---" * len(methods) + "|")
    for edit in EDITS:
        files = {name for name, planted in edits_of.items() if planted == edit}
        row = {}
        for method in methods:
            found = {pair.b.file_name for pair in pairs if method in pair.evidence and is_planted(pair)}
            row[method] = len(found & files) / len(files)
        results[edit] = row
        print(f"| {edit} | " + " | ".join(f"{row[method]:.2f}" for method in methods) + " |")
    false = {
        method: sum(1 for pair in pairs if method in pair.evidence and not is_planted(pair))
        for method in methods
    }
    results["false_positive_pairs"] = false
    pairs_compared = len(images) * (len(images) - 1) // 2
    cells = " | ".join(str(false[method]) for method in methods)
    print(f"| flagged pairs not planted (of {pairs_compared:,}) | {cells} |")
    print(f"fingerprints: {fingerprinted:.1f} s; comparing every pair (and embedding): {compared:.1f} s")
    (root / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
