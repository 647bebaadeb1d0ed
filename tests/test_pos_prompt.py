import math

import pytest
import torch
import torch.nn.functional as F
from conftest import reloaded_in_fresh_process
from peft import PeftModel, get_peft_model
from transformers import CLIPConfig, CLIPModel

from rsitr_hf import POSPromptConfig
from rsitr_hf.demo.synthetic import vocabulary
from rsitr_hf.demo.tiny_clip import save_tiny_clip
from rsitr_hf.objectives import multi_positive_infonce, power_triplet_loss
from rsitr_hf.tuners.pos_prompt import SideFusion

SMALL = {"adapter_dim": 16, "adapter_heads": 2, "fusion_layers": [1, 2, 3, 4]}


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny4"), vocabulary(), num_layers=4)


def batch():
    input_ids = torch.tensor([[742, 5, 6, 7, 743], [742, 9, 743, 743, 743]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    pos_input_ids = torch.tensor([[742, 30, 31, 743], [742, 32, 743, 743]])
    pos_tag_ids = torch.tensor([[17, 3, 7, 11, 17], [17, 5, 17, 18, 18]])
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return input_ids, attention_mask, pos_input_ids, pos_tag_ids, pixel_values


def randomise(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.mark.parametrize(
    ("config", "expected"),
    [(POSPromptConfig(), 9_474_048), (POSPromptConfig(pos_adapter_dim=128, fusion="parallel"), 11_054_592)],
)
def test_paper_parameter_counts_on_vit_b32_widths(config, expected):
    model = get_peft_model(CLIPModel(CLIPConfig()), config)
    assert model.get_nb_trainable_parameters()[0] == expected
    assert all(not p.requires_grad for n, p in model.named_parameters() if "posapl_" not in n)


@pytest.mark.parametrize("pos_mode", ["sentence", "aligned"])
def test_zero_init_leaves_embeddings_unchanged(four_layer_dir, pos_mode):
    input_ids, attention_mask, pos_input_ids, pos_tag_ids, pixel_values = batch()
    base = CLIPModel.from_pretrained(four_layer_dir)
    with torch.no_grad():
        text = base.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        image = base.get_image_features(pixel_values=pixel_values).pooler_output
    model = get_peft_model(base, POSPromptConfig(pos_mode=pos_mode, pos_adapter_dim=8, **SMALL)).eval()
    pos = {"pos_input_ids": pos_input_ids} if pos_mode == "sentence" else {"pos_tag_ids": pos_tag_ids}
    with torch.no_grad():
        got = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **pos).pooler_output
        torch.testing.assert_close(got, text, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            model.get_image_features(pixel_values=pixel_values).pooler_output, image, rtol=0, atol=1e-6
        )


@pytest.mark.parametrize(("pos_mode", "missing"), [("sentence", "pos_input_ids"), ("aligned", "pos_tag_ids")])
def test_text_without_pos_inputs_is_an_error_naming_them(four_layer_dir, pos_mode, missing):
    input_ids, attention_mask, *_ = batch()
    model = get_peft_model(
        CLIPModel.from_pretrained(four_layer_dir), POSPromptConfig(pos_mode=pos_mode, **SMALL)
    )
    with pytest.raises(ValueError, match=missing):
        model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)


def test_side_fusion_taps_the_configured_blocks(four_layer_dir):
    *_, pixel_values = batch()
    base = CLIPModel.from_pretrained(four_layer_dir)
    with torch.no_grad():
        reference = base.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    model = get_peft_model(base, POSPromptConfig(**{**SMALL, "fusion_layers": [1, 2, 2, 3]})).eval()
    tower = model.get_base_model().vision_model
    fusion = tower.posapl_fusion["default"]
    randomise(fusion, seed=1)  # SA-Adapters stay zero: block outputs equal the base model's
    with torch.no_grad():
        output = tower(pixel_values=pixel_values, output_hidden_states=True)
        for ours, theirs in zip(output.hidden_states, reference, strict=True):
            torch.testing.assert_close(ours, theirs)
        expected = tower.base_layer.post_layernorm(reference[4][:, 0]) + fusion(
            [reference[1], reference[2], reference[2], reference[3]]
        )
        shifted = tower.base_layer.post_layernorm(reference[4][:, 0]) + fusion(
            [reference[0], reference[1], reference[1], reference[2]]
        )
    torch.testing.assert_close(output.pooler_output, expected)
    assert not torch.allclose(output.pooler_output, shifted, atol=1e-4)


def test_fusion_modes_and_pooling():
    torch.manual_seed(0)
    taps = [torch.randn(2, 3, 4) for _ in range(4)]
    parallel, cascade = SideFusion(4, "parallel", pool=True), SideFusion(4, "cascade", pool=False)
    for module in (parallel, cascade):
        randomise(module)
    moved = [*taps[:3], taps[3] + 1.0]
    assert parallel(taps).shape == (2, 4) and cascade(taps).shape == (2, 3, 4)
    torch.testing.assert_close(parallel(moved), parallel(taps))  # x4 unused in parallel fusion
    assert not torch.allclose(cascade(moved), cascade(taps))
    units = parallel.units
    by_hand = units[3](sum(units[k](taps[k]).mean(dim=1) for k in range(3)))
    torch.testing.assert_close(parallel(taps), by_hand)


def test_padding_does_not_leak_into_the_text_feature(four_layer_dir):
    model = get_peft_model(
        CLIPModel.from_pretrained(four_layer_dir), POSPromptConfig(pos_adapter_dim=8, **SMALL)
    )
    randomise(model)
    model.eval()
    short = torch.tensor([[742, 9, 743]])
    pos = torch.tensor([[742, 32, 743]])
    padded = torch.tensor([[742, 9, 743, 743, 743, 743]])
    with torch.no_grad():
        alone = model.get_text_features(
            input_ids=short, attention_mask=torch.ones_like(short), pos_input_ids=pos
        )
        in_batch = model.get_text_features(
            input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 0, 0, 0]]), pos_input_ids=pos
        )
    torch.testing.assert_close(in_batch.pooler_output, alone.pooler_output, atol=1e-5, rtol=0)


def test_save_and_reload_in_a_fresh_process(four_layer_dir, tmp_path):
    input_ids, attention_mask, pos_input_ids, _, pixel_values = batch()
    model = get_peft_model(
        CLIPModel.from_pretrained(four_layer_dir), POSPromptConfig(pos_adapter_dim=8, **SMALL)
    )
    randomise(model)
    model.eval()
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pos_input_ids": pos_input_ids,
        "pixel_values": pixel_values,
    }
    expected, out = reloaded_in_fresh_process(tmp_path, model, four_layer_dir, inputs)
    assert torch.equal(out["image"], expected.image_embeds) and torch.equal(out["text"], expected.text_embeds)
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(four_layer_dir), tmp_path / "adapter")
    assert type(loaded.unload().text_model).__name__ == "CLIPTextModel"
    with pytest.raises(ValueError, match="cannot be merged|not possible"):
        model.merge_and_unload()


def test_multi_positive_infonce_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    image_rows = image[[0, 0, 1]]  # items 0 and 1 are two captions of image 7
    ids = torch.tensor([7, 7, 9])
    scale = torch.tensor(math.log(2.0))  # exp -> 2
    # logits = 2 * S; rows 0 and 1 are [2, 2, 0], row 2 is [0, 0, 2]; targets [.5, .5, 0] and [0, 0, 1]
    row_loss = -math.log(math.e**2 / (2 * math.e**2 + 1))
    last_row = -math.log(math.e**2 / (math.e**2 + 2))
    expected = (2 * row_loss + last_row) / 3  # image->text; text->image is identical here (symmetric S)
    assert multi_positive_infonce(image_rows, text, ids, scale).item() == pytest.approx(expected, rel=1e-6)
    raw = multi_positive_infonce(image_rows, text, ids, torch.tensor(2.0), exponentiate_scale=False)
    assert raw.item() == pytest.approx(expected, rel=1e-6)


def test_power_triplet_by_hand_and_brute_force():
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    text = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # S = [[0.8, 0.0], [0.96, 0.8]]: i2t: row0 (0.1+0-0.8)_+=0, row1 (0.1+0.96-0.8)=0.26
    # t2i: col0 anchor 0.8: (0.1+0.96-0.8)=0.26, col1 anchor 0.8: (0.1+0-0.8)_+=0 -> (0.26^2 * 2) / 2
    assert power_triplet_loss(image, text).item() == pytest.approx(0.26**2, rel=1e-5)
    generator = torch.Generator().manual_seed(3)
    a, b = (F.normalize(torch.randn(5, 3, generator=generator), dim=-1) for _ in range(2))
    s = a @ b.T
    brute = (
        sum(
            max(0.0, 0.1 + s[i, j].item() - s[i, i].item()) ** 2
            + max(0.0, 0.1 + s[j, i].item() - s[i, i].item()) ** 2
            for i in range(5)
            for j in range(5)
            if i != j
        )
        / 2
    )
    assert power_triplet_loss(a, b).item() == pytest.approx(brute, rel=1e-5)


def test_posapl_loss_masks_same_image_negatives_unless_paper_mode():
    from rsitr_hf.objectives import posapl_loss

    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([7, 7, 9])
    scale = torch.tensor(0.0)
    masked = posapl_loss(v, v, ids, scale)
    paper = posapl_loss(v, v, ids, scale, mask_same_image=False)
    # items 0 and 1 (same image, similarity 1) are negatives of each other only in paper mode:
    # 4 hinge terms of (0.1 + 1 - 1)^2 = 0.01, halved -> 0.02 more
    assert (paper - masked).item() == pytest.approx(0.02, abs=1e-6)
    assert (masked - multi_positive_infonce(v, v, ids, scale)).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("pos_padding_id", [0, None])
def test_pos_sentences_are_padded_after_their_end_as_configured(four_layer_dir, pos_padding_id):
    base = CLIPModel.from_pretrained(four_layer_dir)
    model = get_peft_model(base, POSPromptConfig(pos_padding_id=pos_padding_id, **SMALL)).eval()
    randomise(model)  # the Connector starts at zero, which would hide the prior
    tower = model.base_model.model.text_model
    text_config = base.config.text_config
    bos, eos, pad = text_config.bos_token_id, text_config.eos_token_id, text_config.pad_token_id
    expected_padding = 0 if pos_padding_id == 0 else pad
    short = torch.tensor([[bos, 5, 6, eos, pad, pad]])  # padded by a collator with the tokenizer's pad
    assert tower.padded_pos_sentence("default", short, 8).tolist() == [
        [bos, 5, 6, eos] + [expected_padding] * 4
    ]
    longer = torch.tensor([[bos, 5, 6, 7, 8, 9, eos]])  # cut to the caption, nothing padded
    assert tower.padded_pos_sentence("default", longer, 4).tolist() == [[bos, 5, 6, 7]]
    # whatever the collator padded with, the text features are the same
    input_ids = torch.tensor([[bos, 10, 11, 12, 13, 14, 15, eos]])
    features = [
        model.get_text_features(input_ids=input_ids, pos_input_ids=torch.tensor([[bos, 5, 6, eos, fill]]))
        for fill in (pad, 3)
    ]
    torch.testing.assert_close(features[0].pooler_output, features[1].pooler_output)
