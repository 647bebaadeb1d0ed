"""Small CLIP models built offline: a word-level CLIP BPE tokenizer and a tiny ``CLIPConfig``.

They are ordinary ``transformers`` objects saved as ordinary model directories, so every code path
that loads ``openai/clip-vit-base-patch32`` loads them the same way (``CLIPModel.from_pretrained``,
``CLIPProcessor.from_pretrained``). Tests and the offline demo use them where the real checkpoints
would need the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"


def build_word_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer trained on ``words`` so that each of them encodes as one token.

    The merges are learned by ``tokenizers``' BPE trainer with CLIP's byte-level alphabet and
    ``</w>`` end-of-word suffix; words outside the list fall back to smaller pieces. Padding uses the
    end-of-text token, as in OpenAI's CLIP.
    """
    words = sorted({word.lower() for word in words if word.strip()})
    model = BPE(unk_token=EOS_TOKEN, end_of_word_suffix="</w>")
    trainer = BpeTrainer(
        vocab_size=100_000,
        min_frequency=1,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    trainer_tokenizer = Tokenizer(model)
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer_tokenizer.train_from_iterator(words, trainer=trainer)
    state = json.loads(trainer_tokenizer.to_str())["model"]
    vocab = dict(state["vocab"])
    for character in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(character + "</w>", len(vocab))
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    merges = [
        tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in state["merges"]
    ]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_clip_config(
    tokenizer: CLIPTokenizer,
    text_width: int = 32,
    vision_width: int = 48,
    projection_dim: int = 24,
    num_layers: int = 2,
    num_heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
) -> CLIPConfig:
    """A CLIPConfig with different text and vision widths (so shape bugs cannot hide) for ``tokenizer``."""
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": text_width,
        "intermediate_size": 4 * text_width,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "hidden_size": vision_width,
        "intermediate_size": 4 * vision_width,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def clip_processor(tokenizer: CLIPTokenizer, image_size: int) -> CLIPProcessor:
    """CLIP preprocessing (resize shortest side + center crop + CLIP mean/std) at ``image_size`` pixels."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_tiny_clip(out_dir: str | os.PathLike, words: Iterable[str], seed: int = 0, **config_kwargs) -> Path:
    """Build a randomly initialised tiny CLIP for ``words`` and save model + processor to ``out_dir``."""
    tokenizer = build_word_tokenizer(words)
    config = tiny_clip_config(tokenizer, **config_kwargs)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    clip_processor(tokenizer, config.vision_config.image_size).save_pretrained(out_dir)
    return out_dir
