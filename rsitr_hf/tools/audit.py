"""Find duplicate images and captions within and across the splits of RSITR datasets.

``rsitr-audit DATA_DIR [DATA_DIR ...] --output_dir audit`` reads each seed-layout dataset (``train`` and
``test``), compares every image with every other one (exact pixels; perceptual hash under rotations and
flips) and every split's normalised captions with every other split's, and writes:

- ``audit.md``: the tables (also printed): pairs of images per pair of splits and method, shared captions;
- ``audit.json``: the manifest: each flagged pair of images with the evidence of each method (and the
  rotation or flip that matched), the caption overlaps, the settings, unreadable images;
- ``pairs.png``: the flagged pairs side by side, for a person to check.

A dataset without its image folder (the packaged split files) is audited by its captions only.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from ..data.duplicates import HASH_SIZE, PERCEPTUAL_MAX_DISTANCE, CaptionOverlap, ImagePair, audit
from ..data.images import read_rgb
from ..evaluation.inference import RetrievalModel
from ..search.duplicates import MIN_COSINE, NEIGHBOURS, embedding_method
from ..utils.cli import command, command_parser, parse_arguments
from ..utils.files import write_json
from ..utils.plotting import plt

IMAGE_METHODS = ("exact", "perceptual")


def markdown(
    datasets: list[dict], pairs: list[ImagePair], overlaps: list[CaptionOverlap], methods: tuple[str, ...]
) -> str:
    """The tables of an audit (image pairs counted for each of ``methods``)."""
    lines = [
        "## Datasets",
        "",
        "| dataset | train images | test images | images audited |",
        "|---|---|---|---|",
    ]
    for dataset in datasets:
        audited = "yes" if dataset["images_audited"] else "no (no image folder: captions only)"
        counts = dataset["images"]
        lines.append(f"| {dataset['name']} | {counts['train']} | {counts['test']} | {audited} |")
    lines += ["", "## Duplicate images", ""]
    if pairs:
        counts = Counter()
        for pair in pairs:
            key = (pair.a.group, pair.b.group)
            counts[(*key, "any")] += 1
            for method in pair.evidence:
                counts[(*key, method)] += 1
        lines += [
            "| split a | split b | " + " | ".join((*methods, "any")) + " |",
            "|---" * (len(methods) + 3) + "|",
        ]
        for a, b in sorted({(a, b) for a, b, _ in counts}):
            cells = " | ".join(str(counts[(a, b, method)]) for method in (*methods, "any"))
            lines.append(f"| {a} | {b} | {cells} |")
    else:
        lines.append("none found")
    lines += [
        "",
        "## Duplicate captions (after normalisation)",
        "",
        "| split a | split b | shared captions | images of a | images of b |",
        "|---|---|---|---|---|",
    ]
    for overlap in overlaps:
        lines.append(
            f"| {overlap.a} | {overlap.b} | {overlap.shared_captions} | {overlap.images_a} | "
            f"{overlap.images_b} |"
        )
    return "\n".join(lines) + "\n"


def plot_pairs(pairs: list[ImagePair], path: Path, limit: int) -> Path:
    """The first ``limit`` pairs side by side, one row each, labelled with where they are and the evidence."""
    shown = pairs[:limit]
    figure, axes = plt.subplots(len(shown), 2, figsize=(6, 3 * len(shown)), squeeze=False)
    for (left, right), pair in zip(axes, shown, strict=True):
        for axis, image in ((left, pair.a), (right, pair.b)):
            axis.imshow(read_rgb(image.path))
            axis.set_title(f"{image.group}\n{image.file_name}", fontsize=8)
            axis.axis("off")
        evidence = ", ".join(f"{method} {score:g}" for method, score in pair.evidence.items())
        transform = f" ({pair.transform})" if pair.transform not in (None, "none") else ""
        right.text(0.5, -0.08, evidence + transform, transform=right.transAxes, ha="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("data_dirs", nargs="+", metavar="DATA_DIR", help="<root>/<name>_precomp folders")
    parser.add_argument("--output_dir", default="audit", help="where the report, manifest and grid go")
    parser.add_argument(
        "--max_distance",
        type=int,
        default=PERCEPTUAL_MAX_DISTANCE,
        help=f"perceptual method: largest Hamming distance (of {HASH_SIZE**2} bits) of a near duplicate",
    )
    parser.add_argument("--grid_pairs", type=int, default=24, help="pairs drawn in pairs.png")
    parser.add_argument(
        "--model", default=None, help="also the embedding method, with this base CLIP (Hub id or folder)"
    )
    parser.add_argument("--adapter", default=None, help="embedding method: a PEFT adapter on --model")
    parser.add_argument(
        "--min_cosine", type=float, default=MIN_COSINE, help="embedding method: lowest cosine of a duplicate"
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        default=NEIGHBOURS,
        help="embedding method: nearest images checked per image",
    )
    parser.add_argument("--batch_size", type=int, default=64, help="embedding method: images at a time")
    args = parse_arguments(parser, argv)
    extra = []
    if args.model:
        model = RetrievalModel(args.model, args.adapter)
        extra.append(embedding_method(model, args.min_cosine, args.neighbours, args.batch_size))
    result = audit(
        args.data_dirs,
        args.max_distance,
        progress=lambda images: tqdm(images, desc="fingerprints", unit="image", disable=None),
        extra=extra,
    )
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "audit.json", result.manifest())
    methods = (*IMAGE_METHODS, *(method.name for method in result.extra))
    report = markdown(result.datasets, result.pairs, result.overlaps, methods)
    (output_dir / "audit.md").write_text(report, encoding="utf-8")
    if result.pairs and args.grid_pairs > 0:
        plot_pairs(result.pairs, output_dir / "pairs.png", args.grid_pairs)
    print(report, end="")
    if result.unreadable:
        print(f"{len(result.unreadable)} image(s) could not be read (listed in audit.json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
