"""Result grids: each row a text query, then its top-k images with rank and score, the ground-truth image
framed in green when it is known, like the papers' qualitative figures. Training draws one for a few
validation captions (``retrieval_examples.png``); ``rsitr-visualize`` draws them for an image index."""

from __future__ import annotations

import itertools
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch

from ..data.text_inputs import TextInputs
from ..utils.plotting import plt, save_figure
from .embedding import encode_split


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
    save_figure(figure, path, dpi=110)
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

    ``encode_kwargs`` go to :func:`rsitr_hf.evaluation.encode_split` (the method's ``text_inputs``, whose
    text of each caption is the query shown).
    """
    embeddings = encode_split(model, split, processor, **encode_kwargs)
    similarity = embeddings.similarity()  # (images, distinct captions)
    text_inputs = encode_kwargs.get("text_inputs") or TextInputs(processor.tokenizer)
    captions = [[text_inputs.text_of(caption) for caption in row] for row in split["captions"]]
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
