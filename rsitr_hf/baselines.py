"""Baselines that go through the same model, loss and evaluation code paths as the MRS-Adapter."""

from __future__ import annotations

from peft import LoraConfig


def lora_baseline_config(r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.1) -> LoraConfig:
    """LoRA on the attention query and value projections of both CLIP towers.

    ``task_type`` stays ``None``: CLIPModel is not a task model peft knows (FEATURE_EXTRACTION breaks it).
    """
    return LoraConfig(
        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=["q_proj", "v_proj"]
    )
