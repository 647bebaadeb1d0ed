"""CLIP-style contrastive pretraining of a small CLIP on a source-domain dataset (for the offline demo).

The demo needs a base model that already knows *something* about aerial scenes, as
``openai/clip-vit-base-patch32`` does, but cannot download one. This trains every weight of a tiny
``CLIPModel`` with the symmetric InfoNCE loss of CLIP (learned temperature) on the synthetic *source*
domain (:func:`rsitr_hf.objectives.contrastive_loss`, the other captions of an image left out rather than
counted as negatives), then saves it as an ordinary model directory (config, safetensors, tokenizer,
processor).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPProcessor

from ..data import load_rsitr
from ..data.pixels import PixelNormalizer, cached_pixels
from ..data.preprocessing import RetrievalCollator, caption_pairs
from ..data.text_inputs import TextInputs
from ..objectives import contrastive_loss

logger = logging.getLogger(__name__)


def pretrain_clip(
    base_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> Path:
    """Train all weights of the CLIP in ``base_dir`` on the seed-layout dataset ``data_dir``.

    Saves model and processor to ``out_dir`` and returns it. Uses the train split only.
    """
    torch.manual_seed(seed)
    model = CLIPModel.from_pretrained(base_dir)
    processor = CLIPProcessor.from_pretrained(base_dir)
    train = load_rsitr(data_dir, validation_fraction=0.0, seed=seed)["train"]
    pixels = cached_pixels(train, processor.image_processor)
    normalize = PixelNormalizer.from_processor(processor.image_processor)
    generator = torch.Generator().manual_seed(seed)
    text_inputs = TextInputs(processor.tokenizer)
    loader = DataLoader(
        caption_pairs(train, text_inputs),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=RetrievalCollator(pixels, text_inputs),
        drop_last=True,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    total = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.1)
    model.train()
    started = time.perf_counter()
    with tqdm(total=total, desc="pretraining the base on the source domain") as progress:
        for _ in range(epochs):
            for batch in loader:
                output = model(pixel_values=normalize(batch["pixels"]), **batch["text"], return_dict=True)
                loss = contrastive_loss(output.logits_per_image, batch["image_ids"], same_image="excluded")
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                scheduler.step()
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    logger.info(
        "pretrained %s parameters in %.0f s -> %s",
        f"{sum(p.numel() for p in model.parameters()):,}",
        time.perf_counter() - started,
        out_dir,
    )
    return out_dir
