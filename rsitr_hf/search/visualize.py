"""Result grids (``rsitr-visualize``): each row a text query, then its top-k images with rank and score,
the ground-truth image framed in green when it is known, like the papers' qualitative figures.

    rsitr-visualize --index INDEX_DIR --queries QUERIES.tsv --out grid.png [--top_k 5]
    rsitr-visualize --index INDEX_DIR --data DATA_DIR [--split test] [--num_queries 4] --out grid.png

``QUERIES.tsv``: one query per line, optionally followed by a tab and its ground-truth image (a path
relative to the indexed folder). ``--data``: a seed-layout dataset whose images folder is the indexed
one; the queries are the first captions of ``--num_queries`` images spread over the split, each with
its own image as the ground truth. The index's own model embeds the queries (see ``rsitr-search``).
Training writes the same figure for a few validation queries (``retrieval_examples.png``); the drawing is
:mod:`rsitr_hf.evaluation.grids`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..data import load_rsitr
from ..evaluation.grids import GridRow, plot_retrieval_grid, spread
from ..utils.cli import command, command_parser, parse_arguments
from .index import SearchError, open_index
from .query import hit_image, search_images


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
            images=[hit_image(index, hit) for hit in hits],
            scores=[hit.score for hit in hits],
            is_ground_truth=[truth is not None and hit.item == Path(truth).as_posix() for hit in hits],
        )
        for (query, truth), hits in zip(queries, found, strict=True)
    ]


def dataset_queries(data_dir: str, split: str, num_queries: int) -> list[tuple[str, str]]:
    """The first caption and file name of ``num_queries`` images spread over a seed-layout split."""
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
