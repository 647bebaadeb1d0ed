"""Import a checkpoint of the HarMA release (``checkpoint_best.pth`` of seekerhuang/HarMA) as a ``harma`` PEFT
adapter (``rsitr-harma-import``).

    rsitr-harma-import checkpoint_best.pth OUT_DIR --base_model laion/CLIP-ViT-B-32-laion2B-s34B-b79K

The release saves ``{"model": state_dict, "config": ...}`` with the whole model under open_clip's names
(``model.`` before them, or ``clip.`` in checkpoints older than its commit 97facb1). The import keeps the
adapter's tensors and renames them to the tuner's:

- ``…resblocks.{i}.gate1`` is the block gate;
- ``…mmadapter.{img_proj_down, img_proj_up, multihead_attention, gate1}`` are the block's adapter;
- ``…mmadapter.BiShareAdapterxx.{l1, l2, multihead_attention1, gate1}`` are the mini adapter of text
  block ``i``;
- ``temp`` is the temperature.

``nn.MultiheadAttention`` keeps the same tensors whether batch-first or not, so they load as they are. Every
tensor of the release's adapter (``HarMAConfig()``) must be there, or nothing is written.

The frozen backbone in the checkpoint is not imported. Give the base it was trained on as ``--base_model``:
LAION's ViT-B/32 for the release's ``vit`` runs, GeoRSCLIP converted with ``rsitr-convert --activation
quick_gelu`` for its ``geo`` runs. Its patch embedding is compared with the checkpoint's, so an adapter is
never imported onto another base. ``OUT_DIR`` gets the adapter and the base's processor with the release's
evaluation transform (plain resize, no centre crop). ``rsitr-search`` and ``PeftModel.from_pretrained`` then
load it like any trained adapter.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from ..utils.cli import command, command_parser, parse_arguments
from ..utils.errors import InputError
from .convert import read_checkpoint

RELEASE_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
ADAPTER_PARTS = {
    "img_proj_down": "down",
    "img_proj_up": "up",
    "multihead_attention": "attention",
    "gate1": "gate",
}
MINI_PARTS = {"l1": "down", "l2": "up", "multihead_attention1": "attention", "gate1": "gate"}
MINI = "mmadapter.BiShareAdapterxx."
PATCH_EMBEDDING = "visual.conv1.weight"


class ReleaseImportError(InputError, ValueError):
    """The file is not a HarMA release checkpoint for this base; the message says what is wrong."""


def adapter_key(release_key: str) -> str | None:
    """The ``harma`` adapter's key (as ``get_peft_model_state_dict`` names it) of a release key without its
    ``model.``/``clip.`` prefix, or ``None`` for a backbone tensor."""
    if release_key == "temp":
        return "base_model.harma_temperature"
    block = RELEASE_BLOCK.match(release_key)
    if block is None:
        return None
    tower = "vision" if block.group(1) else "text"
    index, rest = block.group(2), block.group(3)
    layer = f"base_model.model.{tower}_model.encoder.layers.{index}.harma_adapter"
    if rest == "gate1":
        return f"{layer}.block_gate"
    if rest.startswith(MINI):
        part, _, tail = rest[len(MINI) :].partition(".")
        return ".".join(filter(None, [f"base_model.harma_mini.{index}", MINI_PARTS.get(part, part), tail]))
    if rest.startswith("mmadapter."):
        part, _, tail = rest[len("mmadapter.") :].partition(".")
        return ".".join(filter(None, [layer, ADAPTER_PARTS.get(part, part), tail]))
    return None


def read_release_state(path: Path) -> dict[str, torch.Tensor]:
    """The release checkpoint's model state dict (``rsitr-convert``'s reader: weights only, nothing in the
    file runs; the ``{"model": ...}`` wrapper unwrapped), keys without their ``model.``/``clip.`` prefix."""
    return {re.sub(r"^(model|clip)\.", "", key): value for key, value in read_checkpoint(path).items()}


def import_release(checkpoint: str | Path, out_dir: str | Path, base_model: str) -> Path:
    """Write the adapter of the release checkpoint ``checkpoint`` for ``base_model`` to ``out_dir`` (see the
    module docstring); returns ``out_dir``."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import CLIPModel, CLIPProcessor

    from ..data.pixels import resized_without_crop
    from ..tuners.harma import HarMAConfig

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    state = read_release_state(checkpoint)
    base = CLIPModel.from_pretrained(base_model)
    patch = base.vision_model.embeddings.patch_embedding.weight
    if PATCH_EMBEDDING in state and not (
        state[PATCH_EMBEDDING].shape == patch.shape
        and torch.allclose(state[PATCH_EMBEDDING].float(), patch, atol=1e-6)
    ):
        raise ReleaseImportError(
            f"{checkpoint} was trained on another base than {base_model} (their patch embeddings differ): "
            "give the base it was trained on (LAION ViT-B/32 for the release's vit runs, GeoRSCLIP for its "
            "geo runs)"
        )
    adapter = {
        key: value for key, value in ((adapter_key(k), v) for k, v in state.items()) if key is not None
    }
    config = HarMAConfig(base_model_name_or_path=base_model)
    model = get_peft_model(base, config)
    expected = get_peft_model_state_dict(model)
    missing = sorted(set(expected) - set(adapter))
    unknown = sorted(set(adapter) - set(expected))
    if missing or unknown:
        what = (
            f"no tensor for {missing[0]}" if missing else f"a tensor the adapter does not have: {unknown[0]}"
        )
        raise ReleaseImportError(
            f"{checkpoint}: not the release's HarMA adapter ({what}; {len(missing)} missing, {len(unknown)} "
            "unknown)"
        )
    for key, tensor in adapter.items():
        if tensor.shape != expected[key].shape:
            raise ReleaseImportError(
                f"{checkpoint}: {key} has shape {tuple(tensor.shape)}, this base's adapter "
                f"{tuple(expected[key].shape)}"
            )
    set_peft_model_state_dict(model, adapter)
    model.save_pretrained(out_dir)
    processor = CLIPProcessor.from_pretrained(base_model)
    processor.image_processor = resized_without_crop(processor.image_processor)
    processor.save_pretrained(out_dir)
    return out_dir


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("checkpoint", help="the release's checkpoint_best.pth (or any checkpoint it saved)")
    parser.add_argument("out_dir", help="the adapter folder to write")
    parser.add_argument(
        "--base_model", required=True, help="the base it was trained on: a Hub id or a converted CLIP folder"
    )
    args = parse_arguments(parser, argv)
    out = import_release(args.checkpoint, args.out_dir, args.base_model)
    print(f"wrote {out}: the release's HarMA adapter for {args.base_model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
