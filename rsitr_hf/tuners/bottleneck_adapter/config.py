"""Configuration of the classic per-layer bottleneck adapter (Houlsby et al. 2019), a PETL baseline."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import TOWERS, checked_towers, encoder_layer_pattern
from ..registration import ExternalPeftConfig

PEFT_TYPE_NAME = "BOTTLENECK_ADAPTER"
POSITIONS = ("attention", "mlp")
ACTIVATIONS = ("relu", "gelu", "swish")


@dataclass
class BottleneckAdapterConfig(ExternalPeftConfig):
    """Houlsby-style adapters: every adapted CLIP block gets its own adapters, one after each sub-layer.

    For a sub-layer output ``y`` (attention or MLP, width ``D``), the adapter returns
    ``y + up(dropout(act(down(y))))`` with ``down: D -> bottleneck_dim`` and ``up: bottleneck_dim -> D``,
    before the block's residual addition. ``up`` starts at zero, so the adapted model starts equal to
    the base model. Nothing is shared between blocks or towers (unlike the MRS-Adapter).

    Args:
        bottleneck_dim: bottleneck width (64 gives 3,965,952 parameters on ViT-B/32, 2.6 %).
        positions: sub-layers followed by an adapter: ``["attention", "mlp"]`` (Houlsby) or ``["mlp"]``
            (Pfeiffer-style, half the parameters).
        activation: ``relu`` | ``gelu`` | ``swish`` (the ``adapters`` library's Houlsby default).
        adapter_dropout: dropout on the bottleneck activation while training.
        towers: which towers to adapt, a subset of ``["vision", "text"]``.
    """

    peft_type_name = PEFT_TYPE_NAME
    bottleneck_dim: int = field(default=64, metadata={"help": "bottleneck width"})
    positions: list[str] = field(default_factory=lambda: list(POSITIONS), metadata={"help": "sub-layers"})
    activation: str = field(default="swish", metadata={"help": "relu | gelu | swish"})
    adapter_dropout: float = field(default=0.0, metadata={"help": "dropout on the bottleneck activation"})
    towers: list[str] = field(default_factory=lambda: list(TOWERS), metadata={"help": "towers to adapt"})
    target_modules: str | list[str] | None = field(
        default=None, metadata={"help": "derived from `towers`: the encoder blocks of those towers"}
    )

    def __post_init__(self):
        super().__post_init__()
        self.towers = checked_towers(self.towers)
        if not self.positions or set(self.positions) - set(POSITIONS):
            raise ValueError(
                f"positions must be a non-empty subset of {list(POSITIONS)}, got {self.positions}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}")
        if self.bottleneck_dim < 1 or not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError("bottleneck_dim must be >= 1 and adapter_dropout in [0, 1)")
        self.positions = [position for position in POSITIONS if position in self.positions]
        self.target_modules = encoder_layer_pattern(self.towers)
