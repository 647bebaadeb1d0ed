"""Result grids (``rsitr-visualize``): each row a text query, then its top-k images with rank and score,
the ground-truth image framed in green when it is known, like the papers' qualitative figures.

    rsitr-visualize --index INDEX_DIR --queries QUERIES.tsv --out grid.png [--top_k 5]
    rsitr-visualize --index INDEX_DIR --data DATA_DIR [--split test] [--num_queries 4] --out grid.png

``QUERIES.tsv``: one query per line, optionally followed by a tab and its ground-truth image (a path
relative to the indexed folder). ``--data``: a seed-layout dataset whose images folder is the indexed
one; the queries are the first captions of ``--num_queries`` images spread over the split, each with
its own image as the ground truth. The index's own model embeds the queries (see ``rsitr-search``).
Training writes the same figure for a few validation queries (``retrieval_examples.png``).
"""

from __future__ import annotations

import itertools
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch

from .cli import command, command_parser, parse_arguments
from .plots import plt
from .search import SearchError, open_index, read_image, search_images


@dataclass
class GridRow:
    """One query and its results, best first: images, cosine scores and whether each is the ground truth."""

    query: str
    images: list[PIL.Image.Image]
    scores: list[float]
    is_ground_truth: list[bool]


def plot_retrieval_grid(rows: list[GridRow], path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw ``rows`` (one per query) into a PNG at ``path``."""
    columns = 1 + max(len(row.images) for row in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.3 * len(rows)), squeeze=False)
    for axis_row, row in zip(axes, rows, strict=True):
        for axis in axis_row:
            axis.set_xticks([])
            axis.set_yticks([])
        axis_row[0].axis("off")
        axis_row[0].text(
            0.0, 0.5, textwrap.fill(row.query, 24), va="center", ha="left", fontsize=9, wrap=True
        )
        for rank, (axis, image, score, truth) in enumerate(
            zip(axis_row[1:], row.images, row.scores, row.is_ground_truth, strict=False), start=1
        ):
            axis.imshow(image)
            axis.set_title(f"#{rank}  {score:.3f}", fontsize=8, color="green" if truth else "black")
            for spine in axis.spines.values():
                spine.set_edgecolor("limegreen" if truth else "lightgrey")
                spine.set_linewidth(4 if truth else 0.5)
        for axis in axis_row[1 + len(row.images) :]:
            axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.98 if title else 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def spread(count: int, total: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)``."""
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(min(count, total))})


def split_examples(
    model: torch.nn.Module,
    split,
    processor,
    num_queries: int = 4,
    top_k: int = 5,
    **encode_kwargs,
) -> list[GridRow]:
    """Grid rows for the first captions of ``num_queries`` images of a dataset split, ranking its images.

    ``encode_kwargs`` go to :func:`rsitr_hf.evaluation.encode_split` (for POSAPL: its text inputs).
    """
    from .evaluation import encode_split

    embeddings = encode_split(model, split, processor, **encode_kwargs)
    similarity = embeddings.similarity()  # (images, distinct captions)
    captions = split[encode_kwargs.get("caption_column", "captions")]
    first_caption = [0, *itertools.accumulate(len(row) for row in captions)]  # row -> its first caption
    rows = []
    for image_row in spread(num_queries, len(split)):
        column = embeddings.caption_text_index[first_caption[image_row]]
        scores, ranked = similarity[:, column].topk(min(top_k, len(split)))
        rows.append(
            GridRow(
                query=captions[image_row][0],
                images=[split[int(i)]["image"] for i in ranked],
                scores=scores.tolist(),
                is_ground_truth=[int(i) == image_row for i in ranked],
            )
        )
    return rows


def read_queries(path: str | os.PathLike) -> list[tuple[str, str | None]]:
    """``(query, ground-truth path or None)`` per non-empty line of a queries file."""
    queries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        query, _, truth = line.partition("\t")
        if not query.strip():
            raise SearchError(f"{path}, line {number}: empty query")
        queries.append((query.strip(), truth.strip() or None))
    return queries


def index_rows(index_dir, queries: list[tuple[str, str | None]], top_k: int) -> list[GridRow]:
    """Grid rows for ``queries`` searched in an image index with the index's own model."""
    index, model = open_index(index_dir)
    found = search_images(index, model, [query for query, _ in queries], top_k)
    return [
        GridRow(
            query=query,
            images=[read_image(Path(index.root) / hit.item) for hit in hits],
            scores=[hit.score for hit in hits],
            is_ground_truth=[truth is not None and hit.item == Path(truth).as_posix() for hit in hits],
        )
        for (query, truth), hits in zip(queries, found, strict=True)
    ]


def dataset_queries(data_dir: str, split: str, num_queries: int) -> list[tuple[str, str]]:
    """The first caption and file name of ``num_queries`` images spread over a seed-layout split."""
    from .data import load_rsitr

    rows = load_rsitr(data_dir, validation_fraction=0.0)[split]
    return [(rows[i]["captions"][0], rows[i]["filename"]) for i in spread(num_queries, len(rows))]


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("--index", required=True, help="an image index built by rsitr-search index")
    parser.add_argument("--queries", help="queries file: 'query[<TAB>ground-truth image]' per line")
    parser.add_argument("--data", help="or a seed-layout dataset whose images the index holds")
    parser.add_argument("--split", default="test", help="with --data: the split queried")
    parser.add_argument("--num_queries", type=int, default=4, help="with --data: queries (one row each)")
    parser.add_argument("--top_k", type=int, default=5, help="images per query")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parse_arguments(parser, argv)
    if bool(args.queries) == bool(args.data):
        raise SearchError("give --queries FILE or --data DATA_DIR")
    if args.queries:
        queries = read_queries(args.queries)
    else:
        queries = dataset_queries(args.data, args.split, args.num_queries)
    rows = index_rows(args.index, queries, args.top_k)
    print(plot_retrieval_grid(rows, args.out, title=f"top-{args.top_k} images per query"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
