"""Configuration of the MRS-Adapter (PE-RSITR, docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import TOWERS, checked_towers, encoder_layer_pattern
from ..registration import ExternalPeftConfig

PEFT_TYPE_NAME = "MRS_ADAPTER"


@dataclass
class MRSAdapterConfig(ExternalPeftConfig):
    """One MRS-Adapter shared by every block of the adapted CLIP towers.

    The adapter reads each block's residual stream after the attention residual (width ``D``: 768 for
    ViT-B/32 vision, 512 for its text tower, read from the base model's config) and its output is added
    parallel to the block's MLP. Per modality: a down-projection ``D -> bottleneck_dim`` and an
    up-projection ``bottleneck_dim -> D - shared_dim``; shared by both modalities: an up-projection
    ``bottleneck_dim -> shared_dim`` writing the last ``shared_dim`` channels. Up-projections and all
    biases start at zero, so the adapted model starts equal to the base model.

    Args:
        bottleneck_dim: width of the bottleneck (paper: 64).
        shared_dim: channels written by the cross-modal shared up-projection (paper: 64).
        adapter_dropout: dropout on the bottleneck activation while training (paper: 0.5).
        towers: which towers to adapt, a subset of ``["vision", "text"]`` (paper: both).
        vision_width, text_width: residual widths of the base model's towers, recorded when the adapter is
            created and checked when it is loaded onto a base model.
    """

    peft_type_name = PEFT_TYPE_NAME
    bottleneck_dim: int = field(default=64, metadata={"help": "bottleneck width"})
    shared_dim: int = field(default=64, metadata={"help": "channels of the cross-modal shared up-projection"})
    adapter_dropout: float = field(default=0.5, metadata={"help": "dropout on the bottleneck activation"})
    towers: list[str] = field(default_factory=lambda: list(TOWERS), metadata={"help": "towers to adapt"})
    vision_width: int | None = field(default=None, metadata={"help": "recorded from the base model"})
    text_width: int | None = field(default=None, metadata={"help": "recorded from the base model"})
    target_modules: str | list[str] | None = field(
        default=None, metadata={"help": "derived from `towers`: the encoder blocks of those towers"}
    )

    def __post_init__(self):
        super().__post_init__()
        self.towers = checked_towers(self.towers)
        if self.bottleneck_dim < 1 or self.shared_dim < 0:
            raise ValueError("bottleneck_dim must be >= 1 and shared_dim >= 0")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError("adapter_dropout must be in [0, 1)")
        self.target_modules = encoder_layer_pattern(self.towers)
