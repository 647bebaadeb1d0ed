"""rsitr-harma-import: a checkpoint saved by the HarMA release becomes a ``harma`` adapter that computes what
the release's model computes. The release checkpoints here are written with the key names of its
``open_clip/model.py`` and ``transformer.py`` (docs: HARMA.md, section 2.8)."""

import pytest
import torch
from conftest import randomise_parameters, tiny_inputs
from peft import PeftModel, get_peft_model
from ruamel.yaml import YAML
from transformers import CLIPModel, CLIPProcessor

from rsitr_hf import HarMAConfig
from rsitr_hf.tools.harma_release import ReleaseImportError, import_release, main

RELEASE_CONFIG = """
model: 'vit'  # 'geo' for GeoRSCLIP
image_res: 224
batch_size_train: 214
use_affil_loss: False
optimizer: {opt: adamW, lr: 4e-4, weight_decay: 0.04, lr_mult: 2}
schedular: {sched: linear, lr: 4e-4, epochs: 50, num_warmup_steps: 0.1}
train_file: ['data/finetune/rsitmd_train.json']
"""

RELEASE_NAMES = {
    "down": "img_proj_down",
    "up": "img_proj_up",
    "attention": "multihead_attention",
    "gate": "gate1",
}
RELEASE_MINI_NAMES = {"down": "l1", "up": "l2", "attention": "multihead_attention1", "gate": "gate1"}


def release_checkpoint(model, prefix: str = "model.") -> dict:
    """``{"model": state_dict, "config": ...}`` as the release saves its HarMA model: open_clip's names for
    the adapters of ``model`` (a ``harma`` PeftModel) and the backbone's patch embedding, ``temp`` at the
    top."""
    clip = model.base_model.model
    state = {"temp": model.base_model.harma_temperature["default"].detach().clone()}
    state[f"{prefix}visual.conv1.weight"] = (
        clip.vision_model.embeddings.patch_embedding.weight.detach().clone()
    )
    for tower, release_tower in (("vision", "visual.transformer"), ("text", "transformer")):
        for index, layer in enumerate(getattr(clip, f"{tower}_model").encoder.layers):
            block = f"{prefix}{release_tower}.resblocks.{index}."
            adapter = layer.harma_adapter["default"]
            state[block + "gate1"] = adapter.block_gate.detach().clone()
            for name, tensor in adapter.state_dict().items():
                if name != "block_gate":
                    part, _, tail = name.partition(".")
                    state[block + "mmadapter." + ".".join(filter(None, [RELEASE_NAMES[part], tail]))] = (
                        tensor.clone()
                    )
            if tower == "text":
                for name, tensor in model.base_model.harma_mini["default"][index].state_dict().items():
                    part, _, tail = name.partition(".")
                    release = ".".join(filter(None, [RELEASE_MINI_NAMES[part], tail]))
                    state[block + "mmadapter.BiShareAdapterxx." + release] = tensor.clone()
    return {"model": state, "config": YAML().load(RELEASE_CONFIG)}  # as Retrieval.py loads its config


@pytest.fixture
def trained(base):
    """A release-shaped HarMA (128 / 64 wide, 8 heads) on the tiny CLIP, weights away from the identity."""
    model = get_peft_model(base, HarMAConfig())
    randomise_parameters(model, "harma_", seed=5)
    return model.eval()


@pytest.mark.parametrize("prefix", ["model.", "clip."])  # clip.: checkpoints older than the release's 97facb1
def test_an_imported_release_checkpoint_computes_what_it_saved(trained, tiny_clip_dir, tmp_path, prefix):
    torch.save(release_checkpoint(trained, prefix), tmp_path / "checkpoint_best.pth")
    out = import_release(tmp_path / "checkpoint_best.pth", tmp_path / "adapter", str(tiny_clip_dir))
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), out).eval()
    pixel_values, input_ids = tiny_inputs()
    with torch.no_grad():
        expected = trained(pixel_values=pixel_values, input_ids=input_ids, return_dict=True)
        got = loaded(pixel_values=pixel_values, input_ids=input_ids, return_dict=True)
    assert torch.equal(got.image_embeds, expected.image_embeds) and torch.equal(
        got.text_embeds, expected.text_embeds
    )
    assert (
        loaded.base_model.harma_temperature["default"].item()
        == trained.base_model.harma_temperature["default"].item()
    )
    processor = CLIPProcessor.from_pretrained(out).image_processor
    assert not processor.do_center_crop  # the release's evaluation resize travels with the adapter


def test_a_checkpoint_for_another_base_or_incomplete_is_refused(trained, tiny_clip_dir, tmp_path, capsys):
    saved = release_checkpoint(trained)
    other = dict(
        saved["model"], **{"model.visual.conv1.weight": saved["model"]["model.visual.conv1.weight"] + 1}
    )
    torch.save({"model": other}, tmp_path / "other_base.pth")
    with pytest.raises(ReleaseImportError, match="trained on another base"):
        import_release(tmp_path / "other_base.pth", tmp_path / "a", str(tiny_clip_dir))
    incomplete = {
        k: v for k, v in saved["model"].items() if "resblocks.1.mmadapter.BiShareAdapterxx.l2" not in k
    }
    torch.save({"model": incomplete}, tmp_path / "incomplete.pth")
    arguments = [str(tmp_path / "incomplete.pth"), str(tmp_path / "b"), "--base_model", str(tiny_clip_dir)]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert "no tensor for base_model.harma_mini.1.up.bias" in error and "Traceback" not in error
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
