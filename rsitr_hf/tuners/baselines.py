"""The baselines of the PETL comparison, declared in the method table beside the rsitr_hf tuners: peft's
LoRA, the linear probe, full fine-tuning and the zero-shot base. They go through the same model, loss and
evaluation code paths as the MRS-Adapter."""

from __future__ import annotations

from peft import LoraConfig

from .methods import MethodSpec, register_method

LORA = register_method(
    MethodSpec(
        name="lora",
        summary="peft's LoRA on the attention query and value projections",
        # task_type stays None: CLIPModel is not a task model peft knows (FEATURE_EXTRACTION breaks it)
        config_class=LoraConfig,
        config_defaults={
            "r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.1,
            "target_modules": ["q_proj", "v_proj"],
        },  # fmt: skip
        hub_tags=("lora",),
        card_text="LoRA (rank-8 updates of the attention query and value projections of both towers).",
    )
)
LINEAR_PROBE = register_method(
    MethodSpec(
        name="linear_probe",
        summary="the two projections only",
        trainable_base=("visual_projection", "text_projection"),
        hub_tags=("linear-probe",),
        card_text="A linear probe: only CLIP's two projections are trained, the towers stay frozen.",
    )
)
FULL = register_method(
    MethodSpec(
        name="full",
        summary="full fine-tuning",
        trainable_base=None,
        hub_tags=("full-fine-tuning",),
        card_text="Full fine-tuning: every weight of the base model is trained.",
    )
)
ZERO_SHOT = register_method(
    MethodSpec(
        name="zero_shot",
        summary="the base model as it is, evaluated without training (rsitr-petl)",
        trains=False,
        hub_tags=("zero-shot",),
        card_text="The base model as it is (zero-shot).",
    )
)


def lora_baseline_config(r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.1) -> LoraConfig:
    """The LoRA baseline's config: LoRA on the attention query and value projections of both CLIP towers."""
    return LORA.make_config(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout)
