"""HarMA: the release's parameter count and block formula, the identity at initialisation, the release's
caption padding and its masked option, sharing across modalities, the trainable temperature, save/load in a
fresh process, and its loss by hand (with the gather over processes)."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    TWO_PROCESS_LAUNCH,
    cli_overrides,
    clip_embeddings,
    randomise_parameters,
    reloaded_in_fresh_process,
    run_script,
    tiny_inputs,
)
from peft import PeftModel, get_peft_model
from transformers import CLIPConfig, CLIPModel

from rsitr_hf import HarMAConfig
from rsitr_hf.evaluation.inference import RetrievalModel
from rsitr_hf.objectives import harma_loss, multi_positive_infonce, weighted_triplet_loss
from rsitr_hf.training import train
from rsitr_hf.training.recipe import load_recipe
from rsitr_hf.tuners.harma import HarMAEncoderLayer, open_clip_ids, trainable_temperature

ROOT = Path(__file__).resolve().parents[1]

SMALL = {"bottleneck_dim": 16, "heads": 2, "mini_dim": 8, "mini_heads": 2}
EOS, PAD = 743, 743  # the tiny CLIP's end-of-text token, which its tokenizer also pads with


def randomise(model, seed=0):
    randomise_parameters(model, "harma_", seed, skip="temperature")


def captions(pad_to: int):
    """Two captions of 5 and 3 tokens padded as the HF tokenizer pads them (end-of-text id, mask 0)."""
    rows = [[742, 5, 6, 7, EOS], [742, 9, EOS]]
    input_ids = torch.tensor([row + [PAD] * (pad_to - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (pad_to - len(row)) for row in rows])
    return input_ids, attention_mask


def text_embeddings(model, input_ids, attention_mask=None):
    with torch.no_grad():
        return model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


@pytest.mark.parametrize(
    "options", [{}, {"share_across_modalities": True}, {"text_padding": "masked"}], ids=str
)
def test_release_parameter_count_on_vit_b32_widths(options):
    model = get_peft_model(CLIPModel(CLIPConfig()), HarMAConfig(**options))
    trainable, total = model.get_nb_trainable_parameters()
    vision = 12 * ((768 * 128 + 128) + (128 * 768 + 768) + (4 * 128**2 + 4 * 128) + 1 + 1)
    mini = (128 * 64 + 64) + (64 * 128 + 128) + (4 * 64**2 + 4 * 64) + 1
    text = 12 * ((512 * 128 + 128) + (128 * 512 + 512) + (4 * 128**2 + 4 * 128) + 1 + 1 + mini)
    print(f"HarMA {options or 'release'}: {trainable:,} trainable parameters on ViT-B/32")
    assert trainable == vision + text + 1 == 5_934_397  # sharing reuses the text blocks' mini adapters
    assert total - trainable == 151_277_313


@pytest.mark.parametrize("text_padding", ["release", "masked"])
def test_fresh_adapter_is_the_base_model(base, tiny_clip_dir, text_padding):
    pixel_values, input_ids = tiny_inputs()
    reference = clip_embeddings(base, pixel_values, input_ids)
    padded_ids, attention_mask = captions(9)
    reference_text = text_embeddings(base, padded_ids, attention_mask)
    model = get_peft_model(base, HarMAConfig(text_padding=text_padding, **SMALL)).eval()
    for got, want in zip(clip_embeddings(model, pixel_values, input_ids), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        text_embeddings(model, padded_ids, attention_mask), reference_text, rtol=0, atol=1e-6
    )


def release_mlp_branch(layer: HarMAEncoderLayer, mlp_output: torch.Tensor, mini_tuner) -> torch.Tensor:
    """The release's block (open_clip ``ResidualAttentionBlock`` with ``MMadapter`` and ``BiShareAdapter``) on
    an MLP output, written independently in its (T, B, C) layout with ``batch_first=False`` attention
    modules loaded from the adapter's tensors."""
    adapter = layer.harma_adapter["default"]

    def attention_of(module):
        release = torch.nn.MultiheadAttention(module.embed_dim, module.num_heads)
        release.load_state_dict(module.state_dict())
        return release

    x = mlp_output.transpose(0, 1)
    mm_attention = attention_of(adapter.attention)
    u = F.gelu(adapter.down(x))
    v = mm_attention(u, u, u)[0]
    if mini_tuner is not None:
        mini_attention = attention_of(mini_tuner.attention)
        y = mini_tuner.down(v)
        alpha = torch.sigmoid(mini_tuner.gate)
        v = mini_tuner.up(alpha * mini_attention(y, y, y)[0] + (1 - alpha) * y) + v
    v = mm_attention(v, v, v)[0]
    beta = torch.sigmoid(adapter.gate)
    adapted = x + adapter.up(beta * u + (1 - beta) * v)
    block_alpha = torch.sigmoid(adapter.block_gate)
    return (block_alpha * adapted + (1 - block_alpha) * x).transpose(0, 1)


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_blocks_compute_the_release_formula(base, tower):
    model = get_peft_model(base, HarMAConfig(**SMALL)).eval()
    randomise(model)
    layer = getattr(model.base_model.model, f"{tower}_model").encoder.layers[1]
    assert isinstance(layer, HarMAEncoderLayer) and layer.index == 1
    mini = model.base_model.harma_mini["default"][1] if tower == "text" else None
    hidden = torch.randn(2, 6, layer.base_layer.embed_dim, generator=torch.Generator().manual_seed(1))
    block = layer.base_layer
    with torch.no_grad():
        after_attention = (
            hidden + block.self_attn(hidden_states=block.layer_norm1(hidden), attention_mask=None)[0]
        )
        mlp_output = block.mlp(block.layer_norm2(after_attention))
        expected = after_attention + release_mlp_branch(layer, mlp_output, mini)
        torch.testing.assert_close(layer(hidden, None), expected, rtol=1e-5, atol=1e-6)


def test_release_padding_gives_open_clip_ids_and_masked_padding_ignores_padding(base, tiny_clip_dir):
    release = get_peft_model(base, HarMAConfig(**SMALL)).eval()
    randomise(release)
    short, short_mask = captions(5)
    long, long_mask = captions(11)
    context = release.base_model.model.text_model.config.max_position_embeddings
    ids_of_open_clip = open_clip_ids(short, EOS, context)
    assert ids_of_open_clip.shape == (2, context) and ids_of_open_clip[1, 3:].eq(0).all()
    assert torch.equal(ids_of_open_clip[1, :3], short[1, :3])
    # whatever the collator did, the adapters see the release's 0-padded context, without a mask
    by_hf_padding = text_embeddings(release, long, long_mask)
    torch.testing.assert_close(text_embeddings(release, short, short_mask), by_hf_padding, rtol=0, atol=1e-6)
    torch.testing.assert_close(text_embeddings(release, ids_of_open_clip), by_hf_padding, rtol=0, atol=1e-6)
    masked = get_peft_model(
        CLIPModel.from_pretrained(tiny_clip_dir), HarMAConfig(text_padding="masked", **SMALL)
    )
    masked.load_state_dict(release.state_dict())
    masked.eval()
    by_masked = text_embeddings(masked, long, long_mask)
    torch.testing.assert_close(text_embeddings(masked, short, short_mask), by_masked, rtol=0, atol=1e-6)
    assert not torch.allclose(by_masked, by_hf_padding, atol=1e-4)  # padding reaches the release's adapters


def test_sharing_across_modalities_uses_one_mini_adapter_per_block_index(base):
    model = get_peft_model(base, HarMAConfig(share_across_modalities=True, **SMALL))
    randomise(model)
    clip = model.base_model.model
    for vision_layer, text_layer in zip(
        clip.vision_model.encoder.layers, clip.text_model.encoder.layers, strict=True
    ):
        assert vision_layer.harma_mini is text_layer.harma_mini is model.base_model.harma_mini
        assert vision_layer.harma_uses_mini["default"] and text_layer.harma_uses_mini["default"]
    pixel_values, _ = tiny_inputs()
    model.get_image_features(pixel_values=pixel_values).pooler_output.square().sum().backward()
    minis = model.base_model.harma_mini["default"]
    assert all(mini.down.weight.grad.abs().sum() > 0 for mini in minis)  # the image alone trains them
    release = get_peft_model(CLIPModel(base.config), HarMAConfig(**SMALL))
    release.get_image_features(pixel_values=pixel_values).pooler_output.square().sum().backward()
    assert all(mini.down.weight.grad is None for mini in release.base_model.harma_mini["default"])


def test_trainable_temperature_is_the_adapters_and_clip_logit_scale_stays_frozen(base):
    model = get_peft_model(base, HarMAConfig(**SMALL))
    temperature = trainable_temperature(model)
    assert temperature is model.base_model.harma_temperature["default"] and temperature.requires_grad
    assert temperature.item() == pytest.approx(0.07)
    assert not model.base_model.model.logit_scale.requires_grad
    pixel_values, input_ids = tiny_inputs(batch=4)
    output = model(pixel_values=pixel_values, input_ids=input_ids, return_dict=True)
    loss = harma_loss(output.image_embeds, output.text_embeds, torch.arange(4), temperature)
    loss.backward()
    assert temperature.grad is not None and temperature.grad != 0
    with pytest.raises(ValueError, match="active HarMA adapter"):
        trainable_temperature(base.__class__(base.config))


@pytest.mark.parametrize("options", [{}, {"share_across_modalities": True}], ids=["release", "shared"])
def test_save_and_reload_in_a_fresh_process(base, tiny_clip_dir, tmp_path, options):
    model = get_peft_model(base, HarMAConfig(**options, **SMALL))
    randomise(model)
    with torch.no_grad():
        model.base_model.harma_temperature["default"].fill_(0.05)
    model.eval()
    pixel_values, input_ids = tiny_inputs()
    inputs = {"pixel_values": pixel_values, "input_ids": input_ids}
    expected, out = reloaded_in_fresh_process(tmp_path, model, tiny_clip_dir, inputs, adapter_name="other")
    assert torch.equal(out["image"], expected.image_embeds) and torch.equal(out["text"], expected.text_embeds)
    assert out["adapter"]["base_model.harma_temperature"].item() == pytest.approx(0.05)
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), tmp_path / "adapter")
    plain = loaded.unload()
    assert not any(hasattr(module, "harma_padding_hook") for module in plain.modules())
    assert not any(module._forward_pre_hooks for module in plain.modules())
    with pytest.raises(ValueError, match="not possible"):
        model.merge_and_unload()


def focal(c: float) -> float:
    return c * (1 - math.exp(-c)) ** 2


def focal_derivative(c: float) -> float:
    return (1 - math.exp(-c)) ** 2 + 2 * c * (1 - math.exp(-c)) * math.exp(-c)


def test_weighted_triplet_by_hand():
    image = torch.eye(2)
    text = torch.tensor([[0.6, 0.8], [1.0, 0.0]], requires_grad=True)
    # S = image @ text.T = [[0.6, 1.0], [0.8, 0.0]]; violations against the image's caption: (0,1) 0.6,
    # (1,0) 1.0; against the caption's image: (0,1) 0.2 + 1.0 - 0.0 = 1.2, (1,0) 0.2 + 0.8 - 0.6 = 0.4
    loss = weighted_triplet_loss(image, text)
    assert loss.item() == pytest.approx((focal(0.6) + focal(1.0) + focal(1.2) + focal(0.4)) / 2, rel=1e-6)
    loss.backward()  # S[0, 1] = text[1, 0] enters violations 0.6 and 1.2; the weight is differentiated too
    assert text.grad[1, 0].item() == pytest.approx(
        (focal_derivative(0.6) + focal_derivative(1.2)) / 2, rel=1e-5
    )
    assert weighted_triplet_loss(image, text, torch.tensor([3, 3])).item() == 0  # same image: no negatives


def test_harma_loss_is_itc_with_the_temperature_plus_the_weighted_triplet():
    image = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.9, 0.5]]), dim=1)
    text = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    ids = torch.tensor([4, 5, 4])
    temperature = torch.tensor(0.07)
    logits = (image @ text.T / 0.07).tolist()
    targets = [[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]

    def cross_entropy(rows):
        return sum(
            -sum(t * (row[j] - math.log(sum(math.exp(v) for v in row))) for j, t in enumerate(target))
            for row, target in zip(rows, targets, strict=True)
        ) / len(rows)

    columns = [list(column) for column in zip(*logits, strict=True)]
    itc = (cross_entropy(logits) + cross_entropy(columns)) / 2
    triplet = weighted_triplet_loss(image, text).item()
    assert harma_loss(image, text, ids, temperature).item() == pytest.approx(itc + triplet, rel=1e-5)
    masked = weighted_triplet_loss(image, text, ids).item()
    assert masked < triplet
    assert harma_loss(image, text, ids, temperature, mask_same_image=True).item() == pytest.approx(
        itc + masked, rel=1e-5
    )
    assert multi_positive_infonce(
        image, text, ids, 1 / temperature, exponentiate_scale=False
    ).item() == pytest.approx(itc, rel=1e-5)


def gathered_gradient(rank: int, world: int, store: str, inputs: torch.Tensor, out: str) -> None:
    """One process of a gloo group: its half of the batch through a shared linear map, HarMA's loss on the
    gathered batch, the gradient averaged over processes as DDP does."""
    import torch.distributed as dist

    from rsitr_hf.utils.distributed import gather_with_gradient

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    projection = torch.nn.Linear(4, 3)
    part = inputs.chunk(world)[rank]
    image, text = F.normalize(projection(part[:, :4]), dim=1), F.normalize(projection(part[:, 4:]), dim=1)
    ids = torch.arange(len(inputs)).chunk(world)[rank]
    loss = harma_loss(
        gather_with_gradient(image), gather_with_gradient(text), gather_with_gradient(ids), torch.tensor(0.1)
    )
    loss.backward()
    gradient = projection.weight.grad
    dist.all_reduce(gradient)
    if rank == 0:
        torch.save({"loss": loss.detach(), "gradient": gradient / world}, out)
    dist.destroy_process_group()


def test_loss_over_the_gathered_batch_has_the_single_process_gradient(tmp_path):
    inputs = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    torch.multiprocessing.spawn(
        gathered_gradient, args=(2, str(tmp_path / "store"), inputs, str(tmp_path / "out.pt")), nprocs=2
    )
    gathered = torch.load(tmp_path / "out.pt")
    torch.manual_seed(0)
    projection = torch.nn.Linear(4, 3)
    image, text = F.normalize(projection(inputs[:, :4]), dim=1), F.normalize(projection(inputs[:, 4:]), dim=1)
    loss = harma_loss(image, text, torch.arange(6), torch.tensor(0.1))
    loss.backward()
    torch.testing.assert_close(gathered["loss"], loss.detach())
    torch.testing.assert_close(gathered["gradient"], projection.weight.grad)


RECIPES = ("harma_rsitmd", "harma_rsicd", "harma_rsitmd_georsclip", "harma_rsicd_georsclip")


def test_release_recipes_match_the_release_configs():
    expected = {  # (base, lr, epochs) of configs/Retrieval_{rsitmd,rsicd}_{vit,geo}.yaml
        "harma_rsitmd": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", 4e-4, 50),
        "harma_rsicd": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", 4e-4, 10),
        "harma_rsitmd_georsclip": ("bases/georsclip-vit-b-32-ret-2-quickgelu", 4e-6, 80),
        "harma_rsicd_georsclip": ("bases/georsclip-vit-b-32-ret-2-quickgelu", 4e-6, 80),
    }
    for name, (base_model, lr, epochs) in expected.items():
        recipe = load_recipe(ROOT / "hub_configs" / f"{name}.yaml")
        assert (recipe.base_model, recipe.optimizer.lr, recipe.training.epochs) == (base_model, lr, epochs)
        assert recipe.method.name == "harma" and recipe.method.config["share_across_modalities"] is False
        options = recipe.loss.options
        assert (recipe.loss.name, options.margin, options.power, options.mask_same_image) == (
            "harma", 0.2, 2.0, False
        )  # fmt: skip
        optimizer = recipe.optimizer
        assert (optimizer.name, optimizer.betas, optimizer.weight_decay, optimizer.decay_biases) == (
            "adamw", [0.9, 0.98], 0.04, False
        )  # fmt: skip
        assert (recipe.schedule.name, recipe.schedule.warmup_fraction) == ("linear", 0.1)
        assert recipe.training.batch_size * recipe.training.gradient_accumulation_steps == 428


def demo_arguments(tiny_clip_dir, synthetic_dir, output_dir, batch_size=8) -> list[str]:
    return ["--base_model", str(tiny_clip_dir), "--data.path", str(synthetic_dir),
            "--data.empty_captions", "error",
            "--method.config", "{bottleneck_dim: 16, heads: 2, mini_dim: 8, mini_heads: 2}",
            "--training.max_steps", "2", "--training.batch_size", str(batch_size),
            "--training.eval_batch_size", "16", "--output_dir", str(output_dir)]  # fmt: skip


@pytest.mark.parametrize("name", RECIPES)
def test_release_recipes_train_on_the_demo_data(tmp_path, tiny_clip_dir, synthetic_dir, name):
    recipe = load_recipe(
        ROOT / "hub_configs" / f"{name}.yaml",
        cli_overrides(demo_arguments(tiny_clip_dir, synthetic_dir, tmp_path)),
    )
    result = train(recipe)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [point["step"] for point in metrics["train_loss"]] == [1, 2]
    monitored = [entry for entry in metrics["evaluations"] if entry["split"] == "test_monitor"]
    assert [entry["step"] for entry in monitored] == [0, 2]  # every validation, never for selection
    assert metrics["test_last"] == monitored[-1]
    best = metrics["test_selected_on_test"]
    assert (
        best["mR"] == max(entry["mR"] for entry in monitored)
        and "selected on the test split" in best["selection"]
    )
    assert metrics["best"]["step"] in (0, 2) and set(metrics["test"]) == set(monitored[0]) - {
        "step",
        "epoch",
        "split",
    }
    assert all(math.isfinite(point["loss"]) for point in metrics["train_loss"])
    assert result.cost["trainable_parameters"] == sum(
        p.numel()
        for p in get_peft_model(CLIPModel.from_pretrained(tiny_clip_dir), HarMAConfig(**SMALL)).parameters()
        if p.requires_grad
    )
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "HARMA (import rsitr_hf first)" and config["text_padding"] == "release"
    # the run's plain resize travels with the adapter: search embeds images as training evaluated them
    searched = RetrievalModel(tiny_clip_dir, tmp_path / "adapter", device="cpu")
    assert not searched.processor.image_processor.do_center_crop
    assert RetrievalModel(tiny_clip_dir, device="cpu").processor.image_processor.do_center_crop


def test_two_processes_train_on_the_gathered_batch(tmp_path, tiny_clip_dir, synthetic_dir):
    """Two processes of 8 pairs see the loss of one process of 16: HarMA's loss is over the gathered batch."""
    single = run_script(
        ["--config", str(ROOT / "hub_configs" / "harma_rsitmd.yaml"),
         *demo_arguments(tiny_clip_dir, synthetic_dir, tmp_path / "one", batch_size=16)]
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_script(
        ["--config", str(ROOT / "hub_configs" / "harma_rsitmd.yaml"),
         *demo_arguments(tiny_clip_dir, synthetic_dir, tmp_path / "two", batch_size=8)],
        [sys.executable, *TWO_PROCESS_LAUNCH],
    )  # fmt: skip
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = (
        json.loads((tmp_path / run / "metrics.json").read_text())["train_loss"] for run in ("one", "two")
    )
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
