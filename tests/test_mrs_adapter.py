import pytest
import torch
from conftest import clip_embeddings, reloaded_in_fresh_process, tiny_inputs
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel

from rsitr_hf import MRSAdapterConfig
from rsitr_hf.demo.synthetic import vocabulary
from rsitr_hf.demo.tiny_clip import save_tiny_clip
from rsitr_hf.objectives import encode_views, hmmc_loss
from rsitr_hf.tuners.baselines import lora_baseline_config
from rsitr_hf.tuners.mrs_adapter import MRSAdapterEncoderLayer

SMALL = {"bottleneck_dim": 16, "shared_dim": 8}  # tiny towers are 48 (vision) and 32 (text) wide

TOKEN_DROPOUT = 0.2  # PE-RSITR's, HMMC's default (rsitr_hf.objectives.HMMCOptions)


def randomise_adapter(peft_model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in peft_model.base_model.mrs_adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def test_paper_parameter_count_on_vit_b32_widths():
    model = get_peft_model(CLIPModel(CLIPConfig()), MRSAdapterConfig())
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 161_088
    assert total - trainable == 151_277_313
    assert all(not p.requires_grad for n, p in model.named_parameters() if "mrs_adapter" not in n)


def test_parameter_count_formula_and_one_wrapper_per_block(base):
    model = get_peft_model(base, MRSAdapterConfig(**SMALL))
    dv, dt, b, s = 48, 32, 16, 8
    expected = (dv * b + b) + (dt * b + b) + (b * (dv - s) + dv - s) + (b * (dt - s) + dt - s) + (b * s + s)
    assert model.get_nb_trainable_parameters()[0] == expected
    wrappers = [m for m in model.modules() if isinstance(m, MRSAdapterEncoderLayer)]
    assert len(wrappers) == 4 and {w.tower for w in wrappers} == {"vision", "text"}
    assert all(w.mrs_adapter is model.base_model.mrs_adapter for w in wrappers)
    text_only = get_peft_model(CLIPModel(base.config), MRSAdapterConfig(towers=["text"], **SMALL))
    assert text_only.get_nb_trainable_parameters()[0] == (dt * b + b) + (b * (dt - s) + dt - s) + (b * s + s)


def test_zero_init_leaves_embeddings_unchanged(base):
    pixel_values, input_ids = tiny_inputs()
    reference = clip_embeddings(base, pixel_values, input_ids)
    model = get_peft_model(base, MRSAdapterConfig(**SMALL))
    model.train()  # adapter dropout active: still exact, the up-projections are zero
    for got, want in zip(clip_embeddings(model, pixel_values, input_ids), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_one_step_changes_the_shared_adapter_seen_by_every_block(base):
    pixel_values, input_ids = tiny_inputs(batch=4)
    model = get_peft_model(base, MRSAdapterConfig(**SMALL))
    clip = model.get_base_model()
    with torch.no_grad():
        before_v = clip.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        before_t = clip.text_model(input_ids=input_ids, output_hidden_states=True).hidden_states
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    views = encode_views(model, pixel_values, {"input_ids": input_ids}, TOKEN_DROPOUT)
    loss = hmmc_loss(views.image, views.text, views.image_aug, views.text_aug, margin=1.0)
    loss.backward()
    shared = model.base_model.mrs_adapter["default"].shared_up
    assert shared.weight.grad.abs().sum() > 0
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after_v = clip.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        after_t = clip.text_model(input_ids=input_ids, output_hidden_states=True).hidden_states
    assert len(after_v) == len(before_v) == 3 and len(after_t) == 3
    torch.testing.assert_close(after_v[0], before_v[0])  # embeddings: no adapter
    for layer in (1, 2):  # every block of both towers now adds the updated adapter
        assert not torch.allclose(after_v[layer], before_v[layer])
        assert not torch.allclose(after_t[layer], before_t[layer])


def test_gradients_of_each_tower_reach_the_shared_projection_only_through_its_own_path(base):
    model = get_peft_model(base, MRSAdapterConfig(**SMALL))
    randomise_adapter(model)
    pixel_values, input_ids = tiny_inputs()
    adapter = model.base_model.mrs_adapter["default"]
    model.get_text_features(input_ids=input_ids).pooler_output.sum().backward()
    assert adapter.shared_up.weight.grad.abs().sum() > 0 and adapter.down["text"].weight.grad.abs().sum() > 0
    assert adapter.down["vision"].weight.grad is None
    model.zero_grad()
    model.get_image_features(pixel_values=pixel_values).pooler_output.sum().backward()
    assert (
        adapter.shared_up.weight.grad.abs().sum() > 0 and adapter.down["vision"].weight.grad.abs().sum() > 0
    )


def test_views_are_one_batched_pass_and_clean_views_match_plain_encoding(base):
    pixel_values, input_ids = tiny_inputs(batch=2)
    model = get_peft_model(base, MRSAdapterConfig(**SMALL))
    randomise_adapter(model)
    model.eval()
    calls = []
    hook = model.get_base_model().vision_model.encoder.register_forward_hook(lambda m, a, o: calls.append(1))
    views = encode_views(model, pixel_values, {"input_ids": input_ids}, TOKEN_DROPOUT)
    hook.remove()
    assert len(calls) == 1
    image, text = clip_embeddings(model, pixel_values, input_ids)
    torch.testing.assert_close(views.image, torch.nn.functional.normalize(image, dim=-1))
    torch.testing.assert_close(views.text, torch.nn.functional.normalize(text, dim=-1))
    torch.testing.assert_close(views.image_aug, views.image)  # eval mode: token dropout off
    model.train()
    torch.manual_seed(0)
    trained = encode_views(model, pixel_values, {"input_ids": input_ids}, TOKEN_DROPOUT)
    assert not torch.allclose(trained.image_aug, trained.image) and not torch.allclose(
        trained.text_aug, trained.text
    )
    assert trained.image.shape == (2, 24) and trained.text_aug.shape == (2, 24)


def test_save_and_reload_in_a_fresh_process(base, tiny_clip_dir, tmp_path):
    model = get_peft_model(base, MRSAdapterConfig(**SMALL))
    randomise_adapter(model)
    model.eval()
    pixel_values, input_ids = tiny_inputs()
    expected, out = reloaded_in_fresh_process(
        tmp_path, model, tiny_clip_dir, {"pixel_values": pixel_values, "input_ids": input_ids}
    )
    assert torch.equal(out["image"], expected.image_embeds) and torch.equal(out["text"], expected.text_embeds)
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len(saved) == 10  # 2 down + 2 up + 1 shared up, weights and biases, each stored once
    assert "base_model.mrs_adapter.shared_up.weight" in saved  # no adapter name in checkpoint keys
    assert sum(t.numel() for t in saved.values()) == model.get_nb_trainable_parameters()[0]


def test_checkpoint_loads_under_another_adapter_name(base, tiny_clip_dir, tmp_path):
    model = get_peft_model(base, MRSAdapterConfig(**SMALL))
    randomise_adapter(model)
    model.save_pretrained(tmp_path)
    expected = model.base_model.mrs_adapter["default"].state_dict()
    loaded = PeftModel.from_pretrained(
        CLIPModel.from_pretrained(tiny_clip_dir), tmp_path, adapter_name="first"
    )
    loaded.load_adapter(tmp_path, adapter_name="second")
    for name in ("first", "second"):
        got = loaded.base_model.mrs_adapter[name].state_dict()
        assert all(torch.equal(got[key], expected[key]) for key in expected)


def test_continue_training_after_reload(base, tiny_clip_dir, tmp_path):
    model = get_peft_model(base, MRSAdapterConfig(**SMALL))
    model.save_pretrained(tmp_path)
    trainable = PeftModel.from_pretrained(
        CLIPModel.from_pretrained(tiny_clip_dir), tmp_path, is_trainable=True
    )
    assert trainable.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0]
    frozen = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), tmp_path)
    assert frozen.get_nb_trainable_parameters()[0] == 0


def test_wrong_width_base_is_a_clear_error(base, tmp_path):
    model = get_peft_model(base, MRSAdapterConfig(**SMALL))
    model.save_pretrained(tmp_path / "adapter")
    other = save_tiny_clip(tmp_path / "wide", vocabulary(), vision_width=64, text_width=40)
    with pytest.raises(ValueError, match=r"vision width is 48 .*this base model has vision width 64"):
        PeftModel.from_pretrained(CLIPModel.from_pretrained(other), tmp_path / "adapter")


def test_unload_gives_back_the_plain_model_and_merge_is_refused(base):
    pixel_values, input_ids = tiny_inputs()
    reference = clip_embeddings(base, pixel_values, input_ids)
    model = get_peft_model(base, MRSAdapterConfig(**SMALL))
    randomise_adapter(model)
    with pytest.raises(ValueError, match="non-linear"):
        model.merge_and_unload()
    plain = model.unload()
    assert type(plain) is CLIPModel
    assert not any(isinstance(m, MRSAdapterEncoderLayer) for m in plain.modules())
    for got, want in zip(clip_embeddings(plain, pixel_values, input_ids), reference, strict=True):
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        assert (
            len(plain.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states) == 3
        )


def test_lora_baseline_goes_through_the_same_views_and_loss(base):
    pixel_values, input_ids = tiny_inputs(batch=4)
    model = get_peft_model(base, lora_baseline_config(r=4))
    model.train()
    views = encode_views(model, pixel_values, {"input_ids": input_ids}, TOKEN_DROPOUT)
    hmmc_loss(views.image, views.text, views.image_aug, views.text_aug, margin=1.0).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)


def test_peft_models_go_through_the_evaluation_path(base, tiny_clip_dir, synthetic_dir):
    from transformers import CLIPProcessor

    from rsitr_hf.data import load_rsitr
    from rsitr_hf.evaluation import evaluate_retrieval

    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    test = load_rsitr(synthetic_dir)["test"]
    zero_shot = evaluate_retrieval(base, test, processor)
    mrs = get_peft_model(base, MRSAdapterConfig(**SMALL))
    assert evaluate_retrieval(mrs, test, processor) == pytest.approx(zero_shot)  # zero-init
    randomise_adapter(mrs, seed=3)
    assert evaluate_retrieval(mrs, test, processor) != pytest.approx(zero_shot)
    lora = get_peft_model(CLIPModel.from_pretrained(tiny_clip_dir), lora_baseline_config(r=4))
    assert evaluate_retrieval(lora, test, processor) == pytest.approx(zero_shot)  # LoRA B starts at zero
