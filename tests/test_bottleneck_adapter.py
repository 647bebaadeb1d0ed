import pytest
import torch
from conftest import clip_embeddings, randomise_parameters, tiny_inputs
from peft import PeftModel, get_peft_model
from transformers import CLIPConfig, CLIPModel

from rsitr_hf import BottleneckAdapterConfig
from rsitr_hf.tuners.bottleneck_adapter import BottleneckAdapterEncoderLayer

SMALL = {"bottleneck_dim": 8}


def randomise(model, seed=0):
    randomise_parameters(model, "bottleneck_", seed)


def test_houlsby_parameter_count_on_vit_b32_widths():
    model = get_peft_model(CLIPModel(CLIPConfig()), BottleneckAdapterConfig())
    trainable, total = model.get_nb_trainable_parameters()
    per_block = {width: 2 * (2 * width * 64 + 64 + width) for width in (768, 512)}  # two adapters a block
    assert trainable == 12 * per_block[768] + 12 * per_block[512] == 3_965_952
    assert total - trainable == 151_277_313
    mlp_only = get_peft_model(CLIPModel(CLIPConfig()), BottleneckAdapterConfig(positions=["mlp"]))
    assert mlp_only.get_nb_trainable_parameters()[0] == trainable // 2


def test_zero_init_is_the_base_model_and_blocks_compute_the_houlsby_formula(base):
    pixel_values, input_ids = tiny_inputs()
    reference = clip_embeddings(base, pixel_values, input_ids)
    model = get_peft_model(base, BottleneckAdapterConfig(**SMALL))
    for got, want in zip(clip_embeddings(model, pixel_values, input_ids), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

    randomise(model)
    model.eval()
    layer = model.base_model.model.vision_model.encoder.layers[0]
    assert isinstance(layer, BottleneckAdapterEncoderLayer)
    block, x = layer.base_layer, torch.randn(2, 5, 48)

    def adapter(adapters, y):
        a = adapters["default"]
        return a.up(torch.nn.functional.silu(a.down(y)))

    with torch.no_grad():
        attended = block.self_attn(block.layer_norm1(x))[0]
        hidden = x + attended + adapter(layer.bottleneck_attention, attended)
        mlp = block.mlp(block.layer_norm2(hidden))
        expected = hidden + mlp + adapter(layer.bottleneck_mlp, mlp)
        torch.testing.assert_close(layer(x, None), expected)
        with model.disable_adapter():
            torch.testing.assert_close(layer(x), block(x, None))
    changed = clip_embeddings(model, pixel_values, input_ids)
    assert all((got - want).abs().max() > 1e-3 for got, want in zip(changed, reference, strict=True))


def test_only_the_adapters_train_and_reload_is_exact(base, tiny_clip_dir, tmp_path):
    model = get_peft_model(base, BottleneckAdapterConfig(**SMALL))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("bottleneck_" in n for n in trainable)
    wrappers = [m for m in model.modules() if isinstance(m, BottleneckAdapterEncoderLayer)]
    assert len(wrappers) == 4  # 2 blocks in each tower of the tiny CLIP
    randomise(model, seed=1)
    model.eval()
    pixel_values, input_ids = tiny_inputs(seed=2)
    before = clip_embeddings(model, pixel_values, input_ids)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), tmp_path / "adapter")
    for got, want in zip(clip_embeddings(reloaded, pixel_values, input_ids), before, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not any(p.requires_grad for p in reloaded.parameters())


def test_unload_and_merge_refusal(base):
    model = get_peft_model(base, BottleneckAdapterConfig(**SMALL))
    with pytest.raises(ValueError, match="merge_and_unload"):
        model.merge_and_unload()
    plain = model.unload()
    assert not any(isinstance(m, BottleneckAdapterEncoderLayer) for m in plain.modules())


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="positions"):
        BottleneckAdapterConfig(positions=["ffn"])
    with pytest.raises(ValueError, match="activation"):
        BottleneckAdapterConfig(activation="tanh")
