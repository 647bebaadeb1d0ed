"""rsitr-audit's duplicate finding on a synthetic dataset with planted duplicates, on this machine.

    python benchmarks/bench_audit.py [--num_images 20000] [--planted_per_edit 25] [--scenes textured|flat]
                                     [--output_dir DIR] [--model BASE [--adapter DIR] [--min_cosine 0.95]]

Writes a seed-layout dataset of ``--num_images`` 256-px images (JPEG, as RSICD ships): a training split and a
test split made of edited copies of training images (each of :data:`EDITS`, ``--planted_per_edit`` times;
PNG, so a copy keeps its pixels) and distinct look-alike images of the same kinds. ``--scenes textured``
(default): every image is a window of its own place, a 640-px textured aerial scene
(:mod:`rsitr_hf.demo.textured`, the kinds in turn), so shifted, cropped and overlapping copies are other
windows of the same place; ``flat``: the demo's flat colour scenes (:mod:`rsitr_hf.demo.synthetic`), for
the global edits only. Reports, for each candidate method (exact, perceptual, visual words and, with
``--model``, embedding), for the candidates together and for the verified audit, the share of each edit's
planted pairs found (recall) and the pairs flagged that were not planted; and the time of each stage.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rsitr_hf.data.duplicates import (
    DEFAULT_VERIFIER,
    DEFAULT_WORDS,
    fingerprint,
    image_pairs,
    read_images,
    verify_pairs,
)
from rsitr_hf.demo.planted import EDITS, GLOBAL_EDITS, ORIGIN, SIZE, place, stored_or_window
from rsitr_hf.demo.textured import KINDS, SCENE_KINDS
from rsitr_hf.evaluation.inference import RetrievalModel
from rsitr_hf.search.duplicates import MIN_COSINE, embedding_method
from rsitr_hf.utils.processes import available_cpus


def write_dataset(
    root: Path, num_images: int, planted_per_edit: int, scenes: str, kinds: Sequence[str] = KINDS
) -> tuple[Path, dict[str, str]]:
    """The dataset and ``{test file: edit}`` of the planted copies (test image k copies training image k,
    the window of place k at :data:`ORIGIN`; every other image is a place of its own, drawn at the image
    size)."""
    data_dir = root / "bench_precomp"
    images = data_dir / "bench_images"
    images.mkdir(parents=True)
    edits = GLOBAL_EDITS if scenes == "flat" else list(EDITS)
    planted = [edit for edit in edits for _ in range(planted_per_edit)]
    num_test = max(len(planted), num_images // 10)
    num_train = num_images - num_test
    edits_of = {}
    for split, count, first_place in (("train", num_train, 0), ("test", num_test, num_train)):
        names, captions = [], []
        for index in range(count):
            name = f"{split}_{index:05d}.jpg"
            if split == "test" and index < len(planted):
                edits_of[name := name.replace(".jpg", ".png")] = planted[index]
                image = EDITS[planted[index]](
                    stored_or_window(place(index, scenes, kinds=kinds), images / source_of(name))
                )
            elif split == "train" and index < len(planted):
                image = place(index, scenes, kinds=kinds)(ORIGIN, ORIGIN, SIZE)
            else:  # a look-alike: another place of the same kinds
                image = place(first_place + index, scenes, SIZE, kinds)(0, 0, SIZE)
            image.save(images / name, quality=95)
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
    parser.add_argument("--scenes", choices=("textured", "flat"), default="textured")
    parser.add_argument(
        "--kinds", nargs="+", choices=list(SCENE_KINDS), default=list(KINDS), help="textured scenes' kinds"
    )
    parser.add_argument("--output_dir", default=None, help="keep the dataset and results.json here")
    parser.add_argument("--model", default=None, help="also the embedding method with this base CLIP")
    parser.add_argument("--adapter", default=None, help="a PEFT adapter on --model")
    parser.add_argument("--min_cosine", type=float, default=MIN_COSINE)
    parser.add_argument("--workers", type=int, default=available_cpus(), help="as rsitr-audit's")
    args = parser.parse_args()
    extra = (
        [embedding_method(RetrievalModel(args.model, args.adapter), args.min_cosine)] if args.model else []
    )
    methods = ("exact", "perceptual", "visual_words", *(["embedding"] if extra else []))
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="bench-audit-"))
    started = time.perf_counter()
    data_dir, edits_of = write_dataset(root, args.num_images, args.planted_per_edit, args.scenes, args.kinds)
    written = time.perf_counter() - started
    images, _ = read_images(data_dir)
    seconds = {}
    started = time.perf_counter()
    prints = fingerprint(images, words=DEFAULT_WORDS, workers=args.workers)
    seconds["fingerprint"] = time.perf_counter() - started
    started = time.perf_counter()
    pairs = image_pairs(prints, extra=extra, words=DEFAULT_WORDS, verifier=None, workers=args.workers)
    seconds["candidates"] = time.perf_counter() - started
    position = {image: index for index, image in enumerate(prints.images)}
    unchecked = [(position[pair.a], position[pair.b]) for pair in pairs if pair.verifiable(DEFAULT_WORDS)]
    started = time.perf_counter()
    geometry = verify_pairs(prints.images, unchecked, DEFAULT_VERIFIER, workers=args.workers)
    seconds["verification"] = time.perf_counter() - started
    verified = set()
    for pair in pairs:
        found = geometry.get((position[pair.a], position[pair.b]))
        if pair.verified or (found is not None and found.duplicate):
            verified.add((pair.a.file_name, pair.b.file_name))

    def planted(pair) -> bool:
        return pair.b.file_name in edits_of and pair.a.file_name == source_of(pair.b.file_name)

    found_by = {method: [pair for pair in pairs if method in pair.evidence] for method in methods}
    found_by["candidates"] = pairs
    found_by["verified"] = [pair for pair in pairs if (pair.a.file_name, pair.b.file_name) in verified]
    columns = list(found_by)
    results = {"num_images": len(images), "scenes": args.scenes, "kinds": args.kinds, "workers": args.workers}
    results["seconds"] = seconds
    results["recall"] = {}
    kinds = f" ({', '.join(args.kinds)})" if args.scenes == "textured" else ""
    print(f"{len(images)} images, {args.scenes} scenes{kinds} ({written:.0f} s to write them)")
    print("| edit | " + " | ".join(columns) + " |\n|---" + "|---" * len(columns) + "|")
    for edit in dict.fromkeys(edits_of.values()):
        files = {name for name, made in edits_of.items() if made == edit}
        row = {
            column: len({pair.b.file_name for pair in found if planted(pair)} & files) / len(files)
            for column, found in found_by.items()
        }
        results["recall"][edit] = row
        print(f"| {edit} | " + " | ".join(f"{row[column]:.2f}" for column in columns) + " |")
    false = {column: sum(not planted(pair) for pair in found) for column, found in found_by.items()}
    results["false_pairs"] = false
    pairs_compared = len(images) * (len(images) - 1) // 2
    print(
        f"| flagged pairs not planted (of {pairs_compared:,}) | "
        + " | ".join(map(str, false.values()))
        + " |"
    )
    seconds["total"] = sum(seconds.values())
    results["verified_pairs_checked"] = len(unchecked)
    results["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"fingerprints (pixels, perceptual hash, visual words): {seconds['fingerprint']:.1f} s; candidates "
        f"(every pair's hashes, the words' neighbours{', embedding' if extra else ''}): "
        f"{seconds['candidates']:.1f} s; verifying {len(unchecked)} candidate pairs: "
        f"{seconds['verification']:.1f} s; total {seconds['total']:.1f} s; peak memory "
        f"{results['peak_memory_gb']:.2f} GB"
    )
    (root / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
