"""The demo's synthetic transfer task, prepared once in a folder: source and target data in the seed layout
and a small CLIP pretrained on the source domain (each skipped when present)."""

from __future__ import annotations

from pathlib import Path

from .pretrain import pretrain_clip
from .synthetic import vocabulary, write_seed_layout
from .tiny_clip import save_tiny_clip

BASE_ARCHITECTURE = {
    "text_width": 96,
    "vision_width": 128,
    "projection_dim": 64,
    "num_layers": 4,
    "num_heads": 4,
    "image_size": 64,
    "patch_size": 8,
}


def prepare_demo_task(
    output_dir: str | Path,
    num_source: int = 1500,
    num_target: int = 800,
    num_test: int = 200,
    pretrain_epochs: int = 3,
    seed: int = 0,
) -> tuple[Path, Path]:
    """The synthetic transfer task in ``output_dir``: source data, the source-pretrained base and the
    target data (each skipped when present). Returns ``(base model dir, target seed-layout dir)``."""
    output_dir = Path(output_dir)
    data_root = output_dir / "data"
    source = data_root / "source_precomp"
    if not (source / "test_caps.txt").is_file():
        write_seed_layout(data_root, "source", num_source, num_test, seed + 1, "source", 64, "png")
    target = data_root / "target_precomp"
    if not (target / "test_caps.txt").is_file():
        write_seed_layout(data_root, "target", num_target, num_test, seed + 2, "target", 64, "tif")
    base = output_dir / "base"
    if not (base / "config.json").is_file():
        initial = save_tiny_clip(output_dir / "base-init", vocabulary(), seed=seed, **BASE_ARCHITECTURE)
        pretrain_clip(initial, source, base, epochs=pretrain_epochs, batch_size=64, lr=2e-3, seed=seed)
    return base, target
