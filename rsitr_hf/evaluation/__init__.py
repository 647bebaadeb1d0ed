"""Retrieval evaluation: recall metrics, split encoding, and an ``evaluate`` metric module."""

from pathlib import Path

from .encoding import RetrievalEmbeddings, encode_split, evaluate_by_ties, evaluate_retrieval
from .metrics import (
    METRIC_KEYS,
    TIE_PROTOCOLS,
    mean_metrics,
    metrics_table,
    retrieval_metrics,
    retrieval_ranks,
    test_results,
)

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
    "encode_split",
    "evaluate_by_ties",
    "evaluate_retrieval",
    "load_retrieval_metric",
    "mean_metrics",
    "metrics_table",
    "retrieval_metrics",
    "retrieval_ranks",
    "test_results",
]
