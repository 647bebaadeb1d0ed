"""Configuration of HarMA's gated multimodal adapters (docs/methods.md, HarMA)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import TOWERS, checked_towers, encoder_layer_pattern
from ..registration import ExternalPeftConfig

PEFT_TYPE_NAME = "HARMA"
TEXT_PADDING = ("release", "masked")


@dataclass
class HarMAConfig(ExternalPeftConfig):
    """HarMA: a gated multimodal adapter on the MLP output of every block of the adapted towers, a block gate,
    a mini adapter inside each text adapter, and the trainable ITC temperature. Defaults are the release
    (seekerhuang/HarMA at d3f13f3): 5,934,397 trainable parameters on ViT-B/32.

    Args:
        bottleneck_dim: width the adapter projects to (128); its attention has ``heads`` heads (8).
        mini_dim: width of the mini adapter inside the bottleneck (64, half of ``bottleneck_dim``); its
            attention has ``mini_heads`` heads (8).
        gate_init: initial value of every gate before its sigmoid (0.6, sigmoid 0.646).
        temperature_init: initial ITC temperature (0.07), a trainable parameter of the adapter; CLIP's
            ``logit_scale`` stays frozen and unused.
        share_across_modalities: ``False`` (release): only the text adapters hold a mini adapter, one per
            block. ``True`` (the paper's description, this project's option): block ``l`` of the vision
            tower uses the mini adapter of text block ``l`` as well (the towers need as many blocks).
        text_padding: ``"release"``: captions are padded to the context length (77) with token id 0, with no
            attention mask, and the adapters' attention sees every position, padding included, as open_clip
            does in the release; ``"masked"`` (this project's option): the adapters' attention ignores
            padding, so outputs do not depend on how captions are padded.
        towers: which towers to adapt, a subset of ``["vision", "text"]`` (release: both).
    """

    peft_type_name = PEFT_TYPE_NAME
    bottleneck_dim: int = field(default=128, metadata={"help": "adapter bottleneck width"})
    heads: int = field(default=8, metadata={"help": "attention heads of the adapter"})
    mini_dim: int = field(default=64, metadata={"help": "mini-adapter width"})
    mini_heads: int = field(default=8, metadata={"help": "attention heads of the mini adapter"})
    gate_init: float = field(default=0.6, metadata={"help": "initial gate value (before its sigmoid)"})
    temperature_init: float = field(default=0.07, metadata={"help": "initial ITC temperature"})
    share_across_modalities: bool = field(
        default=False, metadata={"help": "vision blocks use the text blocks' mini adapters"}
    )
    text_padding: str = field(default="release", metadata={"help": "release | masked"})
    towers: list[str] = field(default_factory=lambda: list(TOWERS), metadata={"help": "towers to adapt"})
    target_modules: str | list[str] | None = field(
        default=None, metadata={"help": "derived from `towers`: the encoder blocks of those towers"}
    )

    def __post_init__(self):
        super().__post_init__()
        self.towers = checked_towers(self.towers)
        if self.text_padding not in TEXT_PADDING:
            raise ValueError(f"text_padding must be one of {list(TEXT_PADDING)}, got {self.text_padding!r}")
        for width, heads in ((self.bottleneck_dim, self.heads), (self.mini_dim, self.mini_heads)):
            if width < 1 or heads < 1 or width % heads:
                raise ValueError(f"a width of {width} cannot be split into {heads} attention heads")
        if self.temperature_init <= 0:
            raise ValueError(f"temperature_init must be > 0, got {self.temperature_init}")
        self.target_modules = encoder_layer_pattern(self.towers)

    @property
    def has_mini_adapters(self) -> bool:
        """Whether the adapter holds mini adapters (used by the text blocks, or shared with vision)."""
        return "text" in self.towers or self.share_across_modalities
