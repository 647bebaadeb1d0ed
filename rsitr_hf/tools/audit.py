"""Find duplicate images and captions within and across the splits of RSITR datasets.

``rsitr-audit DATA_DIR [DATA_DIR ...] --output_dir audit`` reads each seed-layout dataset (``train`` and
``test``), finds candidate pairs of images (exact pixels; perceptual hash under rotations and flips; visual
words, which survive shifts, crops and overlapping tiles; with ``--model``, CLIP embedding neighbours),
verifies each candidate geometrically (matched local features and the similarity transform they agree on),
compares every split's normalised captions with every other split's, and writes:

- ``audit.md``: the tables (also printed): candidate and verified pairs of images per pair of splits and
  method, shared captions;
- ``audit.json``: the manifest: each candidate pair with the evidence of each method, whether it is
  verified and the verified transform (shift, scale, rotation, mirrored), overlap and inliers; the caption
  overlaps, the settings, unreadable images;
- ``pairs.png``: the pairs side by side (verified ones first, the other image's outline drawn on the
  first), for a person to check.

A dataset without its image folder (the packaged split files) is audited by its captions only. Images need
the ``audit`` extra (``pip install "rsitr_hf[audit]"``): FAISS compares perceptual hashes, OpenCV finds
visual words and verifies; ``--candidates perceptual --verification none`` needs FAISS only (nothing but
equal pixels is then verified).
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import PIL.Image
from matplotlib.patches import Polygon
from tqdm.auto import tqdm

from ..data.duplicates import (
    DEFAULT_VERIFIER,
    DEFAULT_WORDS,
    HASH_SIZE,
    PERCEPTUAL_MAX_DISTANCE,
    CaptionOverlap,
    ImagePair,
    audit,
)
from ..data.images import read_rgb
from ..evaluation.inference import RetrievalModel
from ..search.duplicates import MIN_COSINE, NEIGHBOURS, embedding_method
from ..utils.cli import command, command_parser, parse_arguments
from ..utils.files import write_json, write_text
from ..utils.plotting import plt, save_figure
from ..utils.processes import available_cpus

CANDIDATE_METHODS = ("perceptual", "visual_words")


def markdown(
    datasets: list[dict], pairs: list[ImagePair], overlaps: list[CaptionOverlap], methods: tuple[str, ...]
) -> str:
    """The tables of an audit (candidate pairs counted for each of ``methods``, all candidates, verified)."""
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
    lines += ["", "## Duplicate images (candidates by method; verified)", ""]
    columns = (*methods, "candidates", "verified")
    if pairs:
        counts = Counter()
        for pair in pairs:
            key = (pair.a.group, pair.b.group)
            for method in (*pair.evidence, "candidates", *(["verified"] if pair.verified else [])):
                counts[(*key, method)] += 1
        lines += ["| split a | split b | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
        for a, b in sorted({(a, b) for a, b, _ in counts}):
            cells = " | ".join(str(counts[(a, b, column)]) for column in columns)
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
    """The first ``limit`` pairs (verified ones first) side by side, one row each, labelled with where they
    are, the evidence and the verification; a verified pair's second image is outlined on the first."""
    shown = sorted(pairs, key=lambda pair: not pair.verified)[:limit]
    figure, axes = plt.subplots(len(shown), 2, figsize=(6, 3.2 * len(shown)), squeeze=False)
    for (left, right), pair in zip(axes, shown, strict=True):
        for axis, image in ((left, pair.a), (right, pair.b)):
            axis.imshow(read_rgb(image.path))
            axis.set_title(f"{image.group}\n{image.file_name}", fontsize=8)
            axis.axis("off")
        if pair.geometry is not None and pair.verified:
            with PIL.Image.open(pair.b.path) as second:
                outline = pair.geometry.outline(second.size) - 0.5  # pixel edges on imshow's centres
            left.add_patch(Polygon(outline, closed=True, fill=False, edgecolor="yellow", linewidth=1.5))
        right.text(0.5, -0.1, label(pair), transform=right.transAxes, ha="center", va="top", fontsize=7)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
    plt.close(figure)
    return path


def label(pair: ImagePair) -> str:
    """What a pair's row in pairs.png says: the evidence, then the verification."""
    evidence = ", ".join(f"{method} {score:g}" for method, score in pair.evidence.items())
    transform = f" ({pair.transform})" if pair.transform not in (None, "none") else ""
    found = pair.geometry
    if "exact" in pair.evidence:
        verdict = "verified: the same pixels"
    elif found is None and pair.shared_words is not None:
        verdict = f"not verified: {pair.shared_words} shared words agree"
    elif found is None:
        verdict = "not verified"
    else:
        verdict = (
            f"{'verified' if pair.verified else 'not verified'}: {found.inliers} inliers, overlap "
            f"{found.overlap:.0%}, shift ({found.shift[0]:.0f}, {found.shift[1]:.0f}), "
            f"scale {found.scale:.2f}, rotation {found.rotation:.0f}°{', mirrored' if found.mirrored else ''}"
        )
    return f"{evidence}{transform}\n{verdict}"


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("data_dirs", nargs="+", metavar="DATA_DIR", help="<root>/<name>_precomp folders")
    parser.add_argument("--output_dir", default="audit", help="where the report, manifest and grid go")
    parser.add_argument(
        "--candidates",
        nargs="+",
        choices=CANDIDATE_METHODS,
        default=list(CANDIDATE_METHODS),
        help="candidate methods besides exact pixels (and embedding with --model)",
    )
    parser.add_argument(
        "--max_distance",
        type=int,
        default=PERCEPTUAL_MAX_DISTANCE,
        help=f"perceptual method: largest Hamming distance (of {HASH_SIZE**2} bits) of a candidate",
    )
    parser.add_argument(
        "--word_neighbours",
        type=int,
        default=DEFAULT_WORDS.neighbours,
        help="visual words: most similar images checked per image",
    )
    parser.add_argument(
        "--word_margin",
        type=float,
        default=DEFAULT_WORDS.margin,
        help=f"visual words: a candidate is this many times as similar as the image's "
        f"{DEFAULT_WORDS.reference}th most similar",
    )
    parser.add_argument(
        "--verification",
        choices=("geometric", "none"),
        default="geometric",
        help="how candidates are verified (none: only equal pixels are)",
    )
    parser.add_argument(
        "--features",
        choices=("sift", "orb"),
        default=DEFAULT_VERIFIER.features,
        help="verification's features",
    )
    parser.add_argument(
        "--min_inliers",
        type=int,
        default=DEFAULT_VERIFIER.min_inliers,
        help="verification: matches that must agree with the transform",
    )
    parser.add_argument(
        "--min_overlap",
        type=float,
        default=DEFAULT_VERIFIER.min_overlap,
        help="verification: share of the smaller image the other must cover",
    )
    parser.add_argument("--grid_pairs", type=int, default=24, help="pairs drawn in pairs.png")
    parser.add_argument(
        "--model", default=None, help="also the embedding method, with this base CLIP (Hub id or folder)"
    )
    parser.add_argument("--adapter", default=None, help="embedding method: a PEFT adapter on --model")
    parser.add_argument(
        "--min_cosine", type=float, default=MIN_COSINE, help="embedding method: lowest cosine of a candidate"
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        default=NEIGHBOURS,
        help="embedding method: nearest images checked per image",
    )
    parser.add_argument("--batch_size", type=int, default=64, help="embedding method: images at a time")
    parser.add_argument(
        "--workers", type=int, default=available_cpus(), help="processes that fingerprint and verify"
    )
    args = parse_arguments(parser, argv)
    extra = []
    if args.model:
        model = RetrievalModel(args.model, args.adapter)
        extra.append(embedding_method(model, args.min_cosine, args.neighbours, args.batch_size))
    words = replace(DEFAULT_WORDS, neighbours=args.word_neighbours, margin=args.word_margin)
    verifier = replace(
        DEFAULT_VERIFIER, features=args.features, min_inliers=args.min_inliers, min_overlap=args.min_overlap
    )
    result = audit(
        args.data_dirs,
        args.max_distance if "perceptual" in args.candidates else None,
        progress=functools.partial(tqdm, disable=None),
        extra=extra,
        words=words if "visual_words" in args.candidates else None,
        verifier=verifier if args.verification == "geometric" else None,
        workers=args.workers,
    )
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "audit.json", result.manifest())
    methods = ("exact", *args.candidates, *(method.name for method in result.extra))
    report = markdown(result.datasets, result.pairs, result.overlaps, methods)
    write_text(output_dir / "audit.md", report)
    if result.pairs and args.grid_pairs > 0:
        plot_pairs(result.pairs, output_dir / "pairs.png", args.grid_pairs)
    print(report, end="")
    if result.unreadable:
        print(f"{len(result.unreadable)} image(s) could not be read (listed in audit.json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
