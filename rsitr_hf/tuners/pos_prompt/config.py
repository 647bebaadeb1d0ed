"""Configuration of POSAPL's part-of-speech-aware prompt tuner (docs/methods.md, POSAPL)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registration import ExternalPeftConfig

PEFT_TYPE_NAME = "POS_PROMPT"
FUSION_MODES = ("cascade", "parallel")
POS_MODES = ("sentence", "aligned")


@dataclass
class POSPromptConfig(ExternalPeftConfig):
    """POSAPL: Connector (+ optional per-layer POS-Adapters) on the text tower, SA-Adapters in every block
    of both towers, and Side Fusion of four blocks' residual streams. Defaults are the RSITMD release.

    Args:
        adapter_dim: SA-Adapter bottleneck width (128); its self-attention has ``adapter_heads`` heads (8).
        pos_adapter_dim: width of the per-layer POS-Adapters of the text tower; ``None`` for none
            (RSITMD release), 128 in the RSICD release.
        fusion: ``"cascade"`` (RSITMD) or ``"parallel"`` (RSICD) Side Fusion.
        fusion_layers: the four 1-based blocks whose outputs Side Fusion taps (ViT-B/32: 6, 8, 10, 12).
        pos_mode: ``"sentence"``: the published POS prior, the CLIP tokens of the POS sentence embedded by
            CLIP's frozen token and position embeddings (input ``pos_input_ids``); ``"aligned"``: a learned
            embedding of the UPOS tag of each caption token (input ``pos_tag_ids``).
        num_pos_tags: size of the aligned tag vocabulary (17 UPOS tags + special + padding).
        pos_padding_id: sentence mode: the token id of the positions after a POS sentence's end-of-text
            token, up to the caption's length. ``0`` (default) is the release's (``clip.tokenize`` pads with
            zeros); ``None`` takes the text config's ``pad_token_id`` (rsitr_hf 0.1's choice).
    """

    peft_type_name = PEFT_TYPE_NAME
    adapter_dim: int = field(default=128, metadata={"help": "SA-Adapter bottleneck width"})
    adapter_heads: int = field(default=8, metadata={"help": "SA-Adapter attention heads"})
    pos_adapter_dim: int | None = field(
        default=None, metadata={"help": "per-layer POS-Adapter width or None"}
    )
    fusion: str = field(default="cascade", metadata={"help": "cascade | parallel"})
    fusion_layers: list[int] = field(
        default_factory=lambda: [6, 8, 10, 12], metadata={"help": "tapped blocks"}
    )
    pos_mode: str = field(default="sentence", metadata={"help": "sentence | aligned"})
    num_pos_tags: int = field(default=19, metadata={"help": "aligned mode: tag vocabulary size"})
    pos_padding_id: int | None = field(
        default=0, metadata={"help": "sentence mode: id after a POS sentence's end (0: the release's)"}
    )
    target_modules: str | list[str] | None = field(
        default=r"(.*\.)?(vision|text)_model", metadata={"help": "the two CLIP towers"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if self.pos_mode not in POS_MODES:
            raise ValueError(f"pos_mode must be one of {POS_MODES}, got {self.pos_mode!r}")
        if len(self.fusion_layers) != 4 or min(self.fusion_layers) < 1:
            raise ValueError(f"fusion_layers must be four 1-based block numbers, got {self.fusion_layers}")
        if self.adapter_dim % self.adapter_heads:
            raise ValueError("adapter_dim must be divisible by adapter_heads")
