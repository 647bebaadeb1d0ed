"""Training objectives: the loss table (:mod:`.table`) and the losses declared in it (HMMC, POSAPL's,
HarMA's), the terms they are built of, and the views of a batch they compare. They work on any CLIP-like
model; HarMA's reads its adapter's temperature through the HarMA tuner."""

# the papers' losses in the order of the methods: the loss table (and --help) lists them in this order
from .hmmc import HMMC, HMMCOptions, hmmc_loss  # noqa: I001
from .posapl import POSAPL, POSAPLOptions, posapl_loss, power_triplet_loss
from .harma import HARMA, HarMAOptions, harma_loss, weighted_triplet_loss
from .losses import contrastive_loss, hinge_triplet_loss, multi_positive_infonce, negatives_mask
from .table import LOSSES, LossSpec, NoOptions, get_loss, loss_options, loss_summaries, register_loss
from .views import ViewEmbeddings, encode_views, pair_embeddings, unwrap_clip

__all__ = [
    "HARMA",
    "HMMC",
    "HMMCOptions",
    "HarMAOptions",
    "LOSSES",
    "LossSpec",
    "NoOptions",
    "POSAPL",
    "POSAPLOptions",
    "ViewEmbeddings",
    "contrastive_loss",
    "encode_views",
    "get_loss",
    "harma_loss",
    "hinge_triplet_loss",
    "hmmc_loss",
    "loss_options",
    "loss_summaries",
    "multi_positive_infonce",
    "negatives_mask",
    "pair_embeddings",
    "posapl_loss",
    "power_triplet_loss",
    "register_loss",
    "unwrap_clip",
    "weighted_triplet_loss",
]
