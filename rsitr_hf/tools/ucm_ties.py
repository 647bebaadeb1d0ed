"""How much tie handling moves UCM-Captions figures: ``python -m rsitr_hf.evaluation.ucm_ties``.

UCM-shaped similarity: the real UCM-Captions test split (210 images, 1,050 captions, of which only 377 are
distinct strings, packaged with rsitr_hf), one synthetic unit embedding per distinct caption string, and
per image the normalised mean of its five captions' embeddings plus seeded noise. Identical captions of
different images get identical columns, so image queries meet exact ties as on the real data; caption
queries do not (no two images share an embedding). Prints the metrics under each tie protocol.
"""

from __future__ import annotations

import numpy as np

from ..data.reference import splits_dir
from ..data.seed_layout import CAPTIONS_PER_IMAGE, read_lines
from ..evaluation.metrics import TIE_PROTOCOLS, metrics_table, retrieval_metrics
from ..utils.cli import command_parser, parse_arguments


def ucm_shaped_similarity(seed: int = 0, dim: int = 64, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(similarity, caption_image_ids)``: ``(210, 1050)`` float32 and ``(1050,)``, captions in file order
    (image ``i`` owns captions ``5i .. 5i+4``)."""
    captions = read_lines(splits_dir() / "ucm_precomp" / "test_caps.txt")
    rng = np.random.default_rng(seed)
    distinct = sorted(set(captions))
    vectors = rng.standard_normal((len(distinct), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    text = vectors[[distinct.index(caption) for caption in captions]]
    images = text.reshape(-1, CAPTIONS_PER_IMAGE, dim).mean(axis=1)
    images += noise * rng.standard_normal(images.shape).astype(np.float32) / np.sqrt(dim)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    caption_image_ids = np.arange(len(captions)) // CAPTIONS_PER_IMAGE
    return (images @ text.T).astype(np.float32), caption_image_ids


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic embeddings")
    args = parse_arguments(parser, argv)
    similarity, caption_image_ids = ucm_shaped_similarity(args.seed)
    rows = {
        protocol: retrieval_metrics(similarity, caption_image_ids, ties=protocol)
        for protocol in TIE_PROTOCOLS
    }
    print(metrics_table(rows, label="ties"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
