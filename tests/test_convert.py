"""rsitr-convert: OpenAI-format CLIP state dicts -> HF CLIPModel folders, checked against an independent
forward of the OpenAI format written here (OpenAI's model.py, reduced to what ViT CLIP uses)."""

import gzip

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPProcessor

from rsitr_hf.demo.tiny_clip import save_tiny_clip
from rsitr_hf.tools.convert import (
    ConversionError,
    OpenAIArchitecture,
    bytes_to_unicode,
    check_state_dict,
    convert_checkpoint,
    expected_shapes,
    hf_config,
    infer_architecture,
    main,
)

SMALL = {"vision_width": 128, "vision_layers": 2, "patch_size": 8, "image_size": 32, "text_width": 64,
         "text_layers": 2, "context_length": 16, "projection_dim": 32}  # fmt: skip


def random_openai_state_dict(vocab_size: int, seed: int = 0, **sizes) -> dict[str, torch.Tensor]:
    arch = OpenAIArchitecture(vocab_size=vocab_size, **{**SMALL, **sizes})
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_shapes(arch).items():
        tensor = torch.randn(shape, generator=generator) * 0.05
        if key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
            tensor += 1.0
        state[key] = tensor
    state["logit_scale"] = torch.tensor(4.6052)
    return state


# --- an independent forward of the OpenAI format -------------------------------------------------------


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def residual_block(state, prefix, x, heads, mask, activation):
    """OpenAI's ResidualAttentionBlock on (L, N, D) with nn.MultiheadAttention's fused projections."""
    width = x.shape[-1]
    y = F.layer_norm(x, (width,), state[prefix + "ln_1.weight"], state[prefix + "ln_1.bias"], eps=1e-5)
    attended, _ = F.multi_head_attention_forward(
        y, y, y, width, heads,
        state[prefix + "attn.in_proj_weight"], state[prefix + "attn.in_proj_bias"],
        None, None, False, 0.0,
        state[prefix + "attn.out_proj.weight"], state[prefix + "attn.out_proj.bias"],
        need_weights=False, attn_mask=mask,
    )  # fmt: skip
    x = x + attended
    y = F.layer_norm(x, (width,), state[prefix + "ln_2.weight"], state[prefix + "ln_2.bias"], eps=1e-5)
    y = F.linear(y, state[prefix + "mlp.c_fc.weight"], state[prefix + "mlp.c_fc.bias"])
    y = quick_gelu(y) if activation == "quick_gelu" else F.gelu(y)
    return x + F.linear(y, state[prefix + "mlp.c_proj.weight"], state[prefix + "mlp.c_proj.bias"])


def openai_encode_image(state, images, layers, activation):
    width = state["visual.conv1.weight"].shape[0]
    x = F.conv2d(images, state["visual.conv1.weight"], stride=state["visual.conv1.weight"].shape[-1])
    x = x.reshape(x.shape[0], width, -1).permute(0, 2, 1)
    cls = state["visual.class_embedding"].expand(x.shape[0], 1, width)
    x = torch.cat([cls, x], dim=1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, (width,), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"], eps=1e-5)
    x = x.permute(1, 0, 2)
    for index in range(layers):
        x = residual_block(state, f"visual.transformer.resblocks.{index}.", x, width // 64, None, activation)
    x = x.permute(1, 0, 2)
    x = F.layer_norm(
        x[:, 0], (width,), state["visual.ln_post.weight"], state["visual.ln_post.bias"], eps=1e-5
    )
    return x @ state["visual.proj"]


def openai_encode_text(state, tokens, layers, activation):
    width = state["token_embedding.weight"].shape[1]
    length = tokens.shape[1]
    x = state["token_embedding.weight"][tokens] + state["positional_embedding"][:length]
    mask = torch.full((length, length), float("-inf")).triu(1)
    x = x.permute(1, 0, 2)
    for index in range(layers):
        x = residual_block(state, f"transformer.resblocks.{index}.", x, width // 64, mask, activation)
    x = x.permute(1, 0, 2)
    x = F.layer_norm(x, (width,), state["ln_final.weight"], state["ln_final.bias"], eps=1e-5)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ state["text_projection"]


# -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A CLIP tokenizer folder (the words of a few captions) to copy into converted models."""
    return save_tiny_clip(tmp_path_factory.mktemp("tok"), ["a", "plane", "on", "the", "runway"], seed=0)


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_converted_model_matches_the_openai_forward(tmp_path, tokenizer_dir, activation):
    vocab_size = len(CLIPProcessor.from_pretrained(tokenizer_dir).tokenizer)
    state = random_openai_state_dict(vocab_size, seed=1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "clip.pt")
    out = convert_checkpoint(tmp_path / "clip.pt", tmp_path / "hf", tokenizer=str(tokenizer_dir),
                             activation=activation)  # fmt: skip
    model = CLIPModel.from_pretrained(out).eval()
    processor = CLIPProcessor.from_pretrained(out)

    generator = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    tokens = processor.tokenizer(["a plane on the runway", "the runway", "plane"], padding="max_length",
                                 max_length=16, return_tensors="pt")["input_ids"]  # fmt: skip
    assert processor.tokenizer.model_max_length == 16
    with torch.no_grad():
        hf_image = model.get_image_features(pixel_values=images).pooler_output
        hf_text = model.get_text_features(input_ids=tokens).pooler_output
        reference_image = openai_encode_image(state, images, 2, activation)
        reference_text = openai_encode_text(state, tokens, 2, activation)
    torch.testing.assert_close(hf_image, reference_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(hf_text, reference_text, rtol=0, atol=1e-5)
    assert reference_image.abs().max() > 0.05 and reference_text.abs().max() > 0.05  # not trivially zero
    torch.testing.assert_close(model.logit_scale, state["logit_scale"])
    other = "gelu" if activation == "quick_gelu" else "quick_gelu"
    with torch.no_grad():
        assert not torch.allclose(openai_encode_image(state, images, 2, other), hf_image, atol=1e-4)


def test_architecture_is_read_from_shapes_for_the_published_sizes():
    published = {  # vision width, layers, patch, image size, text width, layers, projection
        "ViT-B-32": (768, 12, 32, 224, 512, 12, 512),
        "ViT-B-16": (768, 12, 16, 224, 512, 12, 512),
        "ViT-L-14": (1024, 24, 14, 224, 768, 12, 768),
    }
    for name, (vw, vl, patch, size, tw, tl, proj) in published.items():
        arch = OpenAIArchitecture(
            vision_width=vw, vision_layers=vl, patch_size=patch, image_size=size, text_width=tw,
            text_layers=tl, context_length=77, vocab_size=49408, projection_dim=proj,
        )  # fmt: skip
        state = {k: torch.empty(shape, device="meta") for k, shape in expected_shapes(arch).items()}
        assert infer_architecture(state) == arch, name
        check_state_dict(state, arch)
        config = hf_config(arch, "quick_gelu")
        assert config.vision_config.num_attention_heads == vw // 64
        assert config.text_config.num_attention_heads == tw // 64
        if name == "ViT-B-32":  # the size of openai/clip-vit-base-patch32
            assert sum(torch.Size(shape).numel() for shape in expected_shapes(arch).values()) == 151_277_313


def test_unknown_keys_and_bad_shapes_are_named(tmp_path, tokenizer_dir):
    vocab_size = len(CLIPProcessor.from_pretrained(tokenizer_dir).tokenizer)
    state = random_openai_state_dict(vocab_size)
    torch.save({**state, "visual.attnpool.weight": torch.zeros(3)}, tmp_path / "unknown.pt")
    with pytest.raises(ConversionError, match="unknown key visual.attnpool.weight"):
        convert_checkpoint(tmp_path / "unknown.pt", tmp_path / "a", tokenizer=str(tokenizer_dir))
    torch.save(
        {**state, "visual.transformer.resblocks.1.mlp.c_fc.weight": torch.zeros(500, 128)},
        tmp_path / "shape.pt",
    )
    with pytest.raises(
        ConversionError, match=r"resblocks.1.mlp.c_fc.weight has shape \(500, 128\), expected \(512, 128\)"
    ):
        convert_checkpoint(tmp_path / "shape.pt", tmp_path / "b", tokenizer=str(tokenizer_dir))
    torch.save(random_openai_state_dict(vocab_size + 3), tmp_path / "vocab.pt")
    with pytest.raises(
        ConversionError, match=f"has {vocab_size} tokens but token_embedding.weight has {vocab_size + 3}"
    ):
        convert_checkpoint(tmp_path / "vocab.pt", tmp_path / "c", tokenizer=str(tokenizer_dir))
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "partial.pt")
    assert main([str(tmp_path / "partial.pt"), str(tmp_path / "d"), "--tokenizer", str(tokenizer_dir)]) == 2
    assert not (tmp_path / "d").exists()


def test_tokenizer_built_from_an_open_clip_bpe_file(tmp_path):
    merges = ["p l", "a n", "pl an", "plan e</w>", "r u", "ru n"]
    with gzip.open(tmp_path / "bpe.txt.gz", "wt", encoding="utf-8") as file:
        file.write("\n".join(["#version: 0.2", *merges, ""]))
    vocab_size = 512 + len(merges) + 2
    state = random_openai_state_dict(vocab_size)
    torch.save(state, tmp_path / "clip.bin")
    out = convert_checkpoint(tmp_path / "clip.bin", tmp_path / "hf", bpe=tmp_path / "bpe.txt.gz")
    tokenizer = CLIPProcessor.from_pretrained(out).tokenizer
    alphabet = list(bytes_to_unicode().values())
    assert alphabet[:3] == ["!", '"', "#"] and len(alphabet) == 256
    ids = tokenizer("plane")["input_ids"]
    assert ids == [vocab_size - 2, 512 + merges.index("plan e</w>"), vocab_size - 1]  # SOT, "plane</w>", EOT
    assert tokenizer.convert_ids_to_tokens(alphabet.index("!")) == "!"
    assert tokenizer.convert_ids_to_tokens(256 + alphabet.index("a")) == "a</w>"
