"""Small CLIP models built offline: a word-level CLIP BPE tokenizer and a tiny ``CLIPConfig``.

They are ordinary ``transformers`` objects saved as ordinary model directories, so every code path
that loads ``openai/clip-vit-base-patch32`` loads them the same way (``CLIPModel.from_pretrained``,
``CLIPProcessor.from_pretrained``). Tests and the offline demo use them where the real checkpoints
would need the network.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"


def train_bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that turn each of ``words`` into a single ``word</w>`` symbol.

    Standard BPE training (merge the most frequent adjacent pair, repeat) with ties broken by the
    pair's text, so the result is the same in every run.
    """
    symbols = [[*word[:-1], word[-1] + "</w>"] for word in words]
    merges = []
    while True:
        counts = Counter(pair for word in symbols for pair in zip(word, word[1:], strict=False))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for index, word in enumerate(symbols):
            merged, position = [], 0
            while position < len(word):
                if position + 1 < len(word) and (word[position], word[position + 1]) == best:
                    merged.append(word[position] + word[position + 1])
                    position += 2
                else:
                    merged.append(word[position])
                    position += 1
            symbols[index] = merged


def build_word_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges make each of ``words`` one token (deterministic).

    The base vocabulary is CLIP's byte-level alphabet with and without the ``</w>`` end-of-word
    suffix, so any text encodes; words outside the list fall back to smaller pieces. Padding uses the
    end-of-text token, as in OpenAI's CLIP.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate([*alphabet, *(c + "</w>" for c in alphabet)])}
    merges = train_bpe_merges(sorted({word.lower() for word in words if word.strip()}))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
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
