"""Scoring a model on retrieval splits: one split under the tie protocols (:func:`evaluate_by_ties`), and the
test splits of a run (:func:`score_tests`: the figures a training run, ``rsitr-petl``'s zero-shot row and
the demo report)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
import torch

from ..data.pixels import PixelSource
from .embedding import encode_split
from .metrics import TIE_PROTOCOLS, mean_metrics, retrieval_metrics, test_results


def evaluate_retrieval(
    model: torch.nn.Module, dataset: datasets.Dataset, processor, ties: str = "pessimistic", **encode_kwargs
) -> dict[str, float]:
    """Embed ``dataset`` with ``model`` and return :func:`retrieval_metrics` (R@1/5/10 both ways, mR), exact
    ties counted by ``ties`` (one of ``TIE_PROTOCOLS``)."""
    return evaluate_by_ties(model, dataset, processor, (ties,), **encode_kwargs)[ties]


def evaluate_by_ties(
    model: torch.nn.Module, dataset: datasets.Dataset, processor, protocols=TIE_PROTOCOLS, **encode_kwargs
) -> dict[str, dict[str, float]]:
    """Embed ``dataset`` once (``encode_kwargs``: those of :func:`encode_split`) and return its metrics under
    each tie protocol of ``protocols``."""
    embeddings = encode_split(model, dataset, processor, **encode_kwargs)
    similarity = embeddings.similarity()
    return {
        protocol: retrieval_metrics(similarity, embeddings.caption_image_ids, embeddings.image_ids, protocol)
        for protocol in protocols
    }


@dataclass
class ScoredTests:
    """A model's test figures. ``by_ties``: under each tie protocol, the mean over the run's own datasets (a
    run on one: its figures); ``by_dataset``: each dataset scored (own and others) under ``ties``, with their
    ``mean``, or empty for a run on one dataset scored alone."""

    by_ties: dict[str, dict[str, float]]
    by_dataset: dict[str, dict[str, float]]
    ties: str

    @property
    def metrics(self) -> dict[str, float]:
        """The test metrics under the run's tie protocol (``metrics.json``'s ``test``)."""
        return self.by_ties[self.ties]

    def results(self) -> dict:
        """``metrics.json``'s test entries: ``test``, ``test_ties`` and, when several datasets were scored,
        ``test_by_dataset``."""
        return {
            **test_results(self.by_ties, self.ties),
            **({"test_by_dataset": self.by_dataset} if self.by_dataset else {}),
        }


def score_tests(
    model: torch.nn.Module,
    splits: Mapping[str, tuple[datasets.Dataset, PixelSource | None]],
    own: Sequence[str],
    processor,
    ties: str,
    **encode_kwargs,
) -> ScoredTests:
    """Score ``model`` on each test split of ``splits`` (``{dataset: (rows, pixels or None to decode)}``),
    embedded once each (``encode_kwargs``: those of :func:`encode_split`: the method's text inputs, batch
    size, accelerator ...); ``own``: the datasets the model was trained on, whose mean is the run's test."""
    found = {
        name: evaluate_by_ties(model, rows, processor, TIE_PROTOCOLS, pixels=pixels, **encode_kwargs)
        for name, (rows, pixels) in splits.items()
    }
    by_ties = {protocol: mean_metrics([found[name][protocol] for name in own]) for protocol in TIE_PROTOCOLS}
    by_dataset = {name: by_protocol[ties] for name, by_protocol in found.items()}
    by_dataset = (
        {**by_dataset, "mean": mean_metrics(list(by_dataset.values()))} if len(by_dataset) > 1 else {}
    )
    return ScoredTests(by_ties, by_dataset, ties)
