"""Training objectives of the methods: the retrieval losses, and the clean and augmented views of a batch that
HMMC compares. They work on any CLIP-like model and know nothing of the tuners."""

from .losses import (
    harma_loss,
    hinge_triplet_loss,
    hmmc_loss,
    multi_positive_infonce,
    negatives_mask,
    posapl_loss,
    power_triplet_loss,
    weighted_triplet_loss,
)
from .views import ViewEmbeddings, encode_views, unwrap_clip

__all__ = [
    "ViewEmbeddings",
    "encode_views",
    "harma_loss",
    "hinge_triplet_loss",
    "hmmc_loss",
    "multi_positive_infonce",
    "negatives_mask",
    "posapl_loss",
    "power_triplet_loss",
    "weighted_triplet_loss",
    "unwrap_clip",
]
