"""rsitr-convert: OpenAI-format CLIP state dicts -> HF CLIPModel folders, checked against CLIP's forward
computed straight from the state dict (rsitr_hf.tools.openai_forward, OpenAI's model.py reduced to ViT CLIP),
and the source a converted base remembers."""

import gzip
import json

import pytest
import torch
from safetensors.torch import save_file
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
from rsitr_hf.tools.openai_forward import encode_image, encode_text
from rsitr_hf.training.hub import model_card

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
        reference_image = encode_image(state, images, activation)
        reference_text = encode_text(state, tokens, activation)
    torch.testing.assert_close(hf_image, reference_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(hf_text, reference_text, rtol=0, atol=1e-5)
    assert reference_image.abs().max() > 0.05 and reference_text.abs().max() > 0.05  # not trivially zero
    torch.testing.assert_close(model.logit_scale, state["logit_scale"])
    other = "gelu" if activation == "quick_gelu" else "quick_gelu"
    with torch.no_grad():
        assert not torch.allclose(encode_image(state, images, other), hf_image, atol=1e-4)


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


def test_a_converted_base_remembers_its_source_and_its_check(tmp_path, tokenizer_dir, capsys):
    vocab_size = len(CLIPProcessor.from_pretrained(tokenizer_dir).tokenizer)
    torch.save(random_openai_state_dict(vocab_size, seed=3), tmp_path / "RS5M_ViT-B-32_RET-2.pt")
    arguments = [str(tmp_path / "RS5M_ViT-B-32_RET-2.pt"), str(tmp_path / "hf"), "--tokenizer",
                 str(tokenizer_dir), "--activation", "gelu", "--source", "Zilun/GeoRSCLIP"]  # fmt: skip
    assert main(arguments) == 0
    recorded = json.loads((tmp_path / "hf" / "config.json").read_text())["rsitr_source"]
    assert recorded["checkpoint"] == "RS5M_ViT-B-32_RET-2.pt" and recorded["source"] == "Zilun/GeoRSCLIP"
    assert recorded["activation"] == "gelu" and len(recorded["sha256"]) == 64
    assert min(recorded["lowest_cosine"].values()) >= 0.9999
    assert f"image {recorded['lowest_cosine']['image']:.6f}" in capsys.readouterr().out
    assert CLIPModel.from_pretrained(tmp_path / "hf").config.rsitr_source == recorded
    card = str(
        model_card({"base_model": str(tmp_path / "hf"), "method": {"name": "harma"}}, {"rsicd": {}}, "me/a")
    )
    assert (
        "converted to transformers with `rsitr-convert` from `RS5M_ViT-B-32_RET-2.pt` of `Zilun/GeoRSCLIP`"
        in card
    )
    assert f"SHA-256 `{recorded['sha256'][:16]}" in card and "gelu" in card


def test_a_conversion_whose_embeddings_differ_is_refused(tmp_path, tokenizer_dir, monkeypatch):
    """A mapping mistake (here: the query and key projections of one block swapped) fails the check and
    writes nothing."""
    import rsitr_hf.tools.convert as convert

    vocab_size = len(CLIPProcessor.from_pretrained(tokenizer_dir).tokenizer)
    torch.save(random_openai_state_dict(vocab_size, seed=4), tmp_path / "clip.pt")
    right = convert.convert_state_dict

    def swapped(state, arch):
        converted = right(state, arch)
        block = "vision_model.encoder.layers.0.self_attn."
        for suffix in ("weight", "bias"):
            query, key = converted[f"{block}q_proj.{suffix}"], converted[f"{block}k_proj.{suffix}"]
            converted[f"{block}q_proj.{suffix}"], converted[f"{block}k_proj.{suffix}"] = key, query
        return converted

    monkeypatch.setattr(convert, "convert_state_dict", swapped)
    with pytest.raises(ConversionError, match=r"differ from the source's \(lowest cosine: image 0\.\d+"):
        convert_checkpoint(tmp_path / "clip.pt", tmp_path / "hf", tokenizer=str(tokenizer_dir))
    assert not (tmp_path / "hf").exists()


def test_a_damaged_safetensors_file_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    save_file({"visual.proj": torch.zeros(2, 2)}, path)
    damaged = bytearray(path.read_bytes())
    damaged[:8] = (2**40).to_bytes(8, "little")  # the header's length: far beyond the file
    path.write_bytes(bytes(damaged))
    assert main([str(path), str(tmp_path / "out"), "--bpe", str(tmp_path / "unused.txt.gz")]) == 2
    printed = capsys.readouterr().err
    assert f"{path}: not a readable safetensors file" in printed and printed.count("\n") == 1
    assert "Traceback" not in printed and not (tmp_path / "out").exists()
