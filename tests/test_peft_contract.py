"""What peft's own ``tests/test_custom_models.py`` asks of a method, for every rsitr_hf tuner: several
adapters, set / delete / disable, save and load, ``inject_adapter_in_model``, dtypes and gradient
checkpointing."""

import pytest
import torch
from conftest import tiny_inputs
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, inject_adapter_in_model
from transformers import CLIPModel

from rsitr_hf import BottleneckAdapterConfig, HarMAConfig, MRSAdapterConfig, POSPromptConfig

CONFIGS = {  # each takes further config fields as keyword arguments
    "mrs_adapter": lambda **fields: MRSAdapterConfig(bottleneck_dim=16, shared_dim=8, **fields),
    "bottleneck_adapter": lambda **fields: BottleneckAdapterConfig(bottleneck_dim=8, **fields),
    "pos_prompt": lambda **fields: POSPromptConfig(
        adapter_dim=16, adapter_heads=2, pos_adapter_dim=8, fusion_layers=[1, 1, 2, 2], **fields
    ),
    "harma": lambda **fields: HarMAConfig(bottleneck_dim=16, heads=2, mini_dim=8, mini_heads=2, **fields),
    "harma_shared_masked": lambda **fields: HarMAConfig(
        bottleneck_dim=16,
        heads=2,
        mini_dim=8,
        mini_heads=2,
        share_across_modalities=True,
        text_padding="masked",
        **fields,
    ),
}
PREFIXES = {
    "mrs_adapter": "mrs_",
    "bottleneck_adapter": "bottleneck_",
    "pos_prompt": "posapl_",
    "harma": "harma_",
    "harma_shared_masked": "harma_",
}

pytestmark = pytest.mark.parametrize("method", list(CONFIGS))


@pytest.fixture
def base(tiny_clip_dir):
    return CLIPModel.from_pretrained(tiny_clip_dir)


def inputs(method: str, dtype=torch.float32) -> tuple[dict, dict]:
    """``(image_inputs, text_inputs)`` for the tiny CLIP; POSAPL's text gets its POS sentence ids too."""
    pixel_values, input_ids = tiny_inputs()
    text = {"input_ids": input_ids}
    if method == "pos_prompt":
        text["pos_input_ids"] = input_ids.flip(1)
    return {"pixel_values": pixel_values.to(dtype)}, text


def embeddings(model, method: str, dtype=torch.float32) -> torch.Tensor:
    """``(2B, P)``: image embeddings stacked on text embeddings, without gradients."""
    image, text = inputs(method, dtype)
    with torch.no_grad():
        return torch.cat(
            [model.get_image_features(**image).pooler_output, model.get_text_features(**text).pooler_output]
        )


def adapter_parameters(model, method: str, adapter_name: str | None = None) -> dict[str, torch.nn.Parameter]:
    marker = PREFIXES[method] if adapter_name is None else f".{adapter_name}."
    return {
        name: parameter
        for name, parameter in model.named_parameters()
        if PREFIXES[method] in name and marker in name + "."  # a ParameterDict's key ends with the name
    }


def randomise(model, method: str, adapter_name: str, seed: int = 0) -> None:
    """Non-zero weights for ``adapter_name`` (fresh adapters start as the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter_parameters(model, method, adapter_name).values():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def trainable(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def two_adapter_model(base, method: str):
    model = get_peft_model(base, CONFIGS[method]())
    model.add_adapter("second", CONFIGS[method]())
    randomise(model, method, "default", seed=0)
    randomise(model, method, "second", seed=1)
    return model.eval()


def test_several_adapters_set_disable_and_train_only_the_active_one(base, method):
    plain = embeddings(base, method)
    model = two_adapter_model(base, method)
    size = sum(p.numel() for p in adapter_parameters(model, method, "default").values())
    model.set_adapter("second")
    assert model.active_adapters == ["second"]
    assert trainable(model) == set(adapter_parameters(model, method, "second"))  # only it, as in LoRA
    assert model.get_nb_trainable_parameters()[0] == size
    with_second = embeddings(model, method)
    model.set_adapter("default")
    assert trainable(model) == set(adapter_parameters(model, method, "default"))
    with_default = embeddings(model, method)
    assert not torch.allclose(with_second, with_default, atol=1e-4)
    with model.disable_adapter():
        torch.testing.assert_close(embeddings(model, method), plain)
    torch.testing.assert_close(embeddings(model, method), with_default)


def test_deleting_adapters_removes_their_tensors_and_falls_back_like_lora(base, method, tmp_path):
    model = two_adapter_model(base, method)
    with_default = embeddings(model, method)
    model.delete_adapter("second")
    assert not adapter_parameters(model, method, "second")
    assert not any(".second." in key for key in model.state_dict())
    model.add_adapter("third", CONFIGS[method]())
    model.set_adapter("third")
    model.delete_adapter("third")  # the active one
    assert model.active_adapters == ["default"]
    assert trainable(model) == set(adapter_parameters(model, method, "default"))
    torch.testing.assert_close(embeddings(model, method), with_default)
    model.save_pretrained(tmp_path)
    saved = sorted(path.name for path in tmp_path.iterdir())  # no folders of deleted adapters
    assert saved == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_several_adapters_save_and_load(base, method, tiny_clip_dir, tmp_path):
    model = two_adapter_model(base, method)
    expected = {}
    for name in ("default", "second"):
        model.set_adapter(name)
        expected[name] = embeddings(model, method)
    model.save_pretrained(tmp_path)  # default in tmp_path, second in tmp_path / "second"
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), tmp_path).eval()
    loaded.load_adapter(tmp_path / "second", adapter_name="second")
    for name in ("default", "second"):
        loaded.set_adapter(name)
        torch.testing.assert_close(embeddings(loaded, method), expected[name], rtol=0, atol=0)


def test_inject_adapter_in_model_adds_a_working_adapter(base, method):
    reference = embeddings(base.eval(), method)
    model = inject_adapter_in_model(CONFIGS[method](), base).eval()
    expected_size = get_peft_model(CLIPModel(base.config), CONFIGS[method]()).get_nb_trainable_parameters()[0]
    assert sum(p.numel() for p in adapter_parameters(model, method).values()) == expected_size
    torch.testing.assert_close(embeddings(model, method), reference)  # fresh adapters start as the identity
    randomise(model, method, "default")
    assert not torch.allclose(embeddings(model, method), reference, atol=1e-4)
    saved = get_peft_model_state_dict(model)
    assert sum(tensor.numel() for tensor in saved.values()) == expected_size  # shared tensors saved once


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("how", ["cast after", "base loaded in"])
def test_runs_in_half_precision_either_way(tiny_clip_dir, method, dtype, how):
    """``model.to(dtype)`` (half adapters) or a base loaded in ``dtype`` (fp32 adapters on a half base)."""
    model = get_peft_model(CLIPModel.from_pretrained(tiny_clip_dir), CONFIGS[method]())
    randomise(model, method, "default")
    model.eval()
    reference = embeddings(model, method)
    if how == "cast after":
        model.to(dtype)
    else:
        adapter = {key: value.clone() for key, value in model.state_dict().items() if PREFIXES[method] in key}
        half_base = CLIPModel.from_pretrained(tiny_clip_dir, dtype=dtype)
        model = get_peft_model(half_base, CONFIGS[method]()).eval()
        assert model.load_state_dict(adapter, strict=False).unexpected_keys == []
        assert {p.dtype for p in adapter_parameters(model, method).values()} == {torch.float32}
    got = embeddings(model, method, dtype)
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), reference, atol=0.1, rtol=0.05)


def test_gradient_checkpointing_recomputes_with_the_same_gradients(base, method):
    """Fewer activations are kept for the backward pass, and the adapter's gradients are unchanged."""
    model = get_peft_model(base, CONFIGS[method]())
    randomise(model, method, "default")
    model.train()

    def step() -> tuple[dict[str, torch.Tensor], int]:
        kept = 0

        def keep(tensor):
            nonlocal kept
            kept += tensor.numel()
            return tensor

        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks in both runs
        image, text = inputs(method)
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            loss = (
                model.get_image_features(**image).pooler_output.square().sum()
                + model.get_text_features(**text).pooler_output.square().sum()
            )
        loss.backward()
        parameters = adapter_parameters(model, method)
        # HarMA's ITC temperature is the loss's, not the encoders': the only parameter without a gradient here
        assert {name for name, p in parameters.items() if p.grad is None} <= {
            name for name in parameters if "temperature" in name
        }
        return {name: p.grad.clone() for name, p in parameters.items() if p.grad is not None}, kept

    plain_gradients, plain_kept = step()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    checkpointed_gradients, checkpointed_kept = step()
    assert checkpointed_kept < 0.7 * plain_kept
    assert plain_gradients.keys() == checkpointed_gradients.keys()
    for name, gradient in plain_gradients.items():
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed_gradients[name], gradient, rtol=1e-5, atol=1e-7)


def test_low_cpu_mem_usage_loads_the_same_adapter(base, method, tiny_clip_dir, tmp_path):
    """``PeftModel.from_pretrained(..., low_cpu_mem_usage=True)`` creates the adapter on the meta device and
    fills it from the checkpoint; ``inject_adapter_in_model(..., low_cpu_mem_usage=True)`` leaves it there."""
    model = get_peft_model(base, CONFIGS[method]())
    randomise(model, method, "default")
    expected = embeddings(model.eval(), method)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(
        CLIPModel.from_pretrained(tiny_clip_dir), tmp_path, low_cpu_mem_usage=True
    )
    assert not any(parameter.is_meta for parameter in loaded.parameters())
    torch.testing.assert_close(embeddings(loaded.eval(), method), expected, rtol=0, atol=0)
    empty = inject_adapter_in_model(
        CONFIGS[method](), CLIPModel.from_pretrained(tiny_clip_dir), low_cpu_mem_usage=True
    )
    assert adapter_parameters(empty, method) and all(
        p.is_meta for p in adapter_parameters(empty, method).values()
    )


@pytest.mark.parametrize("autocast", [True, False])
def test_autocast_adapter_dtype_decides_the_adapters_dtype_on_a_half_base(tiny_clip_dir, method, autocast):
    half_base = CLIPModel.from_pretrained(tiny_clip_dir, dtype=torch.bfloat16)
    model = get_peft_model(half_base, CONFIGS[method](), autocast_adapter_dtype=autocast).eval()
    expected = torch.float32 if autocast else torch.bfloat16
    assert {p.dtype for p in adapter_parameters(model, method).values()} == {expected}
    assert torch.isfinite(embeddings(model, method, torch.bfloat16)).all()


def test_with_every_adapter_deleted_the_base_model_runs(base, method):
    plain = embeddings(base.eval(), method)
    model = get_peft_model(base, CONFIGS[method]())
    randomise(model, method, "default")
    model.base_model.delete_adapter("default")
    assert not adapter_parameters(model, method)
    torch.testing.assert_close(embeddings(model.eval(), method), plain)


def test_init_weights_false_starts_away_from_the_base_and_round_trips(base, method, tiny_clip_dir, tmp_path):
    plain = embeddings(base.eval(), method)
    torch.manual_seed(0)
    model = get_peft_model(
        base, CONFIGS[method]().__class__(**{**CONFIGS[method]().to_dict(), "init_weights": False})
    )
    assert model.peft_config["default"].init_weights is False
    started = embeddings(model.eval(), method)
    assert not torch.allclose(started, plain, atol=1e-3)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), tmp_path).eval()
    assert loaded.peft_config["default"].init_weights is False
    torch.testing.assert_close(embeddings(loaded, method), started, rtol=0, atol=0)


def test_modules_to_save_train_beside_the_adapter_and_round_trip(base, method, tiny_clip_dir, tmp_path):
    projections = ["visual_projection", "text_projection"]
    plain = embeddings(base.eval(), method)
    original = base.visual_projection.weight.detach().clone()
    model = get_peft_model(base, CONFIGS[method](modules_to_save=projections))
    for projection in projections:
        copy = getattr(model.base_model.model, projection).modules_to_save["default"]
        assert all(parameter.requires_grad for parameter in copy.parameters())
        with torch.no_grad():
            copy.weight.mul_(2.0)
    adapted = embeddings(model.eval(), method)
    torch.testing.assert_close(
        adapted, 2 * plain
    )  # a fresh adapter is the identity; both projections doubled
    torch.testing.assert_close(model.base_model.model.visual_projection.original_module.weight, original)
    with model.disable_adapter():
        torch.testing.assert_close(embeddings(model, method), plain)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), tmp_path).eval()
    torch.testing.assert_close(embeddings(loaded, method), adapted, rtol=0, atol=0)
    trained = {name for name, parameter in loaded.named_parameters() if "modules_to_save" in name}
    assert trained == {f"base_model.model.{p}.modules_to_save.default.weight" for p in projections}
