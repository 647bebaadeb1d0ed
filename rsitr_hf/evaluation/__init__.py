"""Retrieval evaluation: recall metrics, embedding a split and scoring it, a trained model for inference,
zero-shot scene classification, result grids, and an ``evaluate`` metric module."""

from pathlib import Path

from .embedding import RetrievalEmbeddings, encode_split
from .metrics import (
    METRIC_KEYS,
    TIE_PROTOCOLS,
    mean_metrics,
    metrics_table,
    retrieval_metrics,
    retrieval_ranks,
    test_results,
)
from .scoring import ScoredTests, evaluate_by_ties, evaluate_retrieval, score_tests

METRIC_MODULE_DIR = Path(__file__).parent / "rsitr_retrieval"


def load_retrieval_metric(**kwargs):
    """The local ``evaluate`` module wrapping :func:`retrieval_metrics` (works offline)."""
    import evaluate

    return evaluate.load(str(METRIC_MODULE_DIR), **kwargs)


__all__ = [
    "METRIC_KEYS",
    "METRIC_MODULE_DIR",
    "RetrievalEmbeddings",
    "TIE_PROTOCOLS",
    "ScoredTests",
    "encode_split",
    "evaluate_by_ties",
    "evaluate_retrieval",
    "load_retrieval_metric",
    "mean_metrics",
    "metrics_table",
    "retrieval_metrics",
    "retrieval_ranks",
    "score_tests",
    "test_results",
]
