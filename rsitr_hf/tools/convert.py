"""Convert OpenAI-format CLIP checkpoints (OpenAI, open_clip, GeoRSCLIP, RemoteCLIP) into HF ``CLIPModel``
folders (``rsitr-convert``).

    rsitr-convert CHECKPOINT OUT_DIR (--tokenizer openai/clip-vit-base-patch32 | --bpe FILE.txt.gz)
        [--activation quick_gelu|gelu] [--source Zilun/GeoRSCLIP]

The checkpoint is a ``.pt``/``.bin``/``.safetensors`` state dict with OpenAI's key names
(``visual.conv1.weight``, ``visual.transformer.resblocks.N.attn.in_proj_weight``, ``token_embedding.weight``,
``text_projection`` ...), optionally inside ``{"state_dict": ...}`` and with DDP's ``module.`` prefix, or an
OpenAI TorchScript archive. State dicts are read without running code (safetensors, or torch's zip format
unpickled as plain data by :mod:`rsitr_hf.utils.checkpoint_pickle`, which also reads what training scripts
save beside the weights: configs, epochs, optimizer states). A TorchScript archive is different: loading it
runs code stored in the file, so it is refused unless ``--trust_torchscript`` is given, which only a file
from a source you trust (OpenAI's own release) deserves.
The architecture (ViT-B/32, B/16, L/14 or any other ViT CLIP) is read from the tensor shapes; every key
must be known and every shape consistent, or the conversion stops naming the key. The activation cannot
be read from the weights: use the one of the model config the checkpoint's authors load it with.
OpenAI's releases and open_clip's ``*-quickgelu`` configs use ``quick_gelu``; open_clip's plain ``ViT-B-32``,
``ViT-B-16`` and ``ViT-L-14`` configs (the LAION models, and GeoRSCLIP built on them) use ``gelu``.

The output folder holds ``config.json``, ``model.safetensors``, the image processor (OpenAI's mean/std,
resize + centre crop at the model's resolution) and the tokenizer (copied from ``--tokenizer``, or built
from open_clip's/OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` with ``--bpe``), so
``CLIPModel.from_pretrained(OUT_DIR)`` and ``CLIPProcessor.from_pretrained(OUT_DIR)`` work and recipes
take it as ``base_model``.

Every conversion is checked: the converted model embeds 4 random images and 4 random captions, and so does
CLIP's forward computed straight from the source state dict (:mod:`rsitr_hf.tools.openai_forward`); every
cosine similarity between the two must reach 0.9999, or nothing is written. ``config.json`` remembers the
source under ``rsitr_source``: the checkpoint's file name and SHA-256, where it came from (``--source``),
the activation and the check's lowest cosines. Model cards of adapters trained on the base name it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..utils import checkpoint_pickle
from ..utils.cli import command, command_parser, parse_arguments
from ..utils.errors import InputError, first_line
from .openai_forward import HEAD_WIDTH, encode_image, encode_text

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
CHECK_COSINE = 0.9999  # lowest cosine between the converted model's and the source's embeddings
# not weights: metadata of OpenAI's TorchScript archives, and the causal mask older open_clip versions saved
IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
ACTIVATIONS = ("quick_gelu", "gelu")


class ConversionError(InputError, ValueError):
    """The checkpoint is not an OpenAI-format ViT CLIP state dict; the message names the key or shape."""


@dataclass
class OpenAIArchitecture:
    """Sizes of an OpenAI-format ViT CLIP, read from its state dict."""

    vision_width: int
    vision_layers: int
    patch_size: int
    image_size: int
    text_width: int
    text_layers: int
    context_length: int
    vocab_size: int
    projection_dim: int


def is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript archive: a zip holding ``constants.pkl`` (the test ``torch.load`` uses)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def read_checkpoint(path: str | os.PathLike, trust_torchscript: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a ``.pt``/``.bin`` (pickled dict, or TorchScript archive with ``trust_torchscript``)
    or ``.safetensors`` file. Only a TorchScript archive can run code, hence the explicit flag."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError) as error:  # a damaged header, a file cut short
            raise ConversionError(f"{path}: not a readable safetensors file ({first_line(error)})") from None
    elif is_torchscript_archive(path):  # OpenAI's released .pt files are TorchScript archives
        if not trust_torchscript:
            raise ConversionError(
                f"{path} is a TorchScript archive, and loading one runs code stored in it: pass "
                "--trust_torchscript only if you trust where it comes from (e.g. OpenAI's own release)"
            )
        state = torch.jit.load(path, map_location="cpu").state_dict()
    else:  # training checkpoints: weights beside plain data (configs, epochs, optimizer states)
        state = checkpoint_pickle.read(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    return {key: value for key, value in state.items() if key not in IGNORED_KEYS}


def _layers(state: dict, prefix: str) -> int:
    pattern = re.compile(rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
    indices = {int(match.group(1)) for key in state if (match := pattern.match(key))}
    if not indices:
        raise ConversionError(f"no {prefix or 'text '}transformer blocks ({prefix}transformer.resblocks.N.*)")
    if indices != set(range(len(indices))):
        raise ConversionError(
            f"{prefix}transformer.resblocks: block indices are not 0..N-1: {sorted(indices)}"
        )
    return len(indices)


def infer_architecture(state: dict[str, torch.Tensor]) -> OpenAIArchitecture:
    required = (
        "visual.conv1.weight",
        "visual.positional_embedding",
        "token_embedding.weight",
        "positional_embedding",
        "text_projection",
    )
    missing = [key for key in required if key not in state]
    if missing:
        raise ConversionError(f"missing key {missing[0]}: not an OpenAI-format ViT CLIP state dict")
    vision_width, _, patch_size, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vocab_size, text_width = state["token_embedding.weight"].shape
    return OpenAIArchitecture(
        vision_width=vision_width,
        vision_layers=_layers(state, "visual."),
        patch_size=patch_size,
        image_size=grid * patch_size,
        text_width=text_width,
        text_layers=_layers(state, ""),
        context_length=state["positional_embedding"].shape[0],
        vocab_size=vocab_size,
        projection_dim=state["text_projection"].shape[1],
    )


def _block_shapes(prefix: str, width: int, layers: int) -> dict[str, tuple]:
    shapes = {}
    for index in range(layers):
        block = f"{prefix}transformer.resblocks.{index}."
        shapes.update(
            {
                f"{block}attn.in_proj_weight": (3 * width, width),
                f"{block}attn.in_proj_bias": (3 * width,),
                f"{block}attn.out_proj.weight": (width, width),
                f"{block}attn.out_proj.bias": (width,),
                f"{block}ln_1.weight": (width,),
                f"{block}ln_1.bias": (width,),
                f"{block}ln_2.weight": (width,),
                f"{block}ln_2.bias": (width,),
                f"{block}mlp.c_fc.weight": (4 * width, width),
                f"{block}mlp.c_fc.bias": (4 * width,),
                f"{block}mlp.c_proj.weight": (width, 4 * width),
                f"{block}mlp.c_proj.bias": (width,),
            }
        )
    return shapes


def expected_shapes(arch: OpenAIArchitecture) -> dict[str, tuple]:
    """Every key of an OpenAI-format state dict of ``arch`` with its shape."""
    v, t, grid = arch.vision_width, arch.text_width, arch.image_size // arch.patch_size
    shapes = {
        "visual.conv1.weight": (v, 3, arch.patch_size, arch.patch_size),
        "visual.class_embedding": (v,),
        "visual.positional_embedding": (grid * grid + 1, v),
        "visual.ln_pre.weight": (v,),
        "visual.ln_pre.bias": (v,),
        "visual.ln_post.weight": (v,),
        "visual.ln_post.bias": (v,),
        "visual.proj": (v, arch.projection_dim),
        "token_embedding.weight": (arch.vocab_size, t),
        "positional_embedding": (arch.context_length, t),
        "ln_final.weight": (t,),
        "ln_final.bias": (t,),
        "text_projection": (t, arch.projection_dim),
        "logit_scale": (),
    }
    shapes.update(_block_shapes("visual.", v, arch.vision_layers))
    shapes.update(_block_shapes("", t, arch.text_layers))
    return shapes


def check_state_dict(state: dict[str, torch.Tensor], arch: OpenAIArchitecture) -> None:
    """Every key known, none missing, every shape consistent with ``arch``; else a ``ConversionError``."""
    expected = expected_shapes(arch)
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise ConversionError(
            f"unknown key {unknown[0]} ({len(unknown)} unknown in all): not an OpenAI-format ViT CLIP key"
        )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ConversionError(f"missing key {missing[0]} ({len(missing)} missing in all)")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ConversionError(
                f"{key} has shape {tuple(state[key].shape)}, expected {shape} for a ViT CLIP with vision "
                f"width "
                f"{arch.vision_width}, text width {arch.text_width}, patch {arch.patch_size}, image "
                f"{arch.image_size}, projection {arch.projection_dim}"
            )
    for width, tower in ((arch.vision_width, "vision"), (arch.text_width, "text")):
        if width % HEAD_WIDTH:
            raise ConversionError(f"{tower} width {width} is not a multiple of the {HEAD_WIDTH}-wide heads")


def hf_config(arch: OpenAIArchitecture, activation: str) -> CLIPConfig:
    text_config = {
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.text_width,
        "intermediate_size": 4 * arch.text_width,
        "num_hidden_layers": arch.text_layers,
        "num_attention_heads": arch.text_width // HEAD_WIDTH,
        "max_position_embeddings": arch.context_length,
        "hidden_act": activation,
        "bos_token_id": arch.vocab_size - 2,  # <|startoftext|>
        "eos_token_id": arch.vocab_size - 1,  # <|endoftext|>, also the padding token
        "pad_token_id": arch.vocab_size - 1,
        "projection_dim": arch.projection_dim,
    }
    vision_config = {
        "hidden_size": arch.vision_width,
        "intermediate_size": 4 * arch.vision_width,
        "num_hidden_layers": arch.vision_layers,
        "num_attention_heads": arch.vision_width // HEAD_WIDTH,
        "image_size": arch.image_size,
        "patch_size": arch.patch_size,
        "hidden_act": activation,
        "projection_dim": arch.projection_dim,
    }
    return CLIPConfig(
        text_config=text_config, vision_config=vision_config, projection_dim=arch.projection_dim
    )


def _convert_blocks(state: dict, prefix: str, hf_prefix: str, layers: int) -> dict[str, torch.Tensor]:
    converted = {}
    renames = {
        "attn.out_proj": "self_attn.out_proj",
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for index in range(layers):
        block, hf_block = f"{prefix}transformer.resblocks.{index}.", f"{hf_prefix}encoder.layers.{index}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{block}attn.in_proj_{kind}"].chunk(3)
            converted.update(
                {
                    f"{hf_block}self_attn.q_proj.{kind}": q,
                    f"{hf_block}self_attn.k_proj.{kind}": k,
                    f"{hf_block}self_attn.v_proj.{kind}": v,
                }
            )
            for old, new in renames.items():
                converted[f"{hf_block}{new}.{kind}"] = state[f"{block}{old}.{kind}"]
    return converted


def convert_state_dict(state: dict[str, torch.Tensor], arch: OpenAIArchitecture) -> dict[str, torch.Tensor]:
    """OpenAI-format keys -> ``CLIPModel`` keys (fused attention split, projections transposed)."""
    converted = {
        "logit_scale": state["logit_scale"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].T,
    }
    converted.update(_convert_blocks(state, "visual.", "vision_model.", arch.vision_layers))
    converted.update(_convert_blocks(state, "", "text_model.", arch.text_layers))
    return {key: value.float().contiguous() for key, value in converted.items()}


def tokenizer_from_bpe(path: str | os.PathLike, context_length: int) -> CLIPTokenizer:
    """The CLIP tokenizer of open_clip's/OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (their SimpleTokenizer's
    vocabulary: bytes, bytes + ``</w>``, the first 48,894 merges, ``<|startoftext|>``, ``<|endoftext|>``)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as file:
        lines = file.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1] if line.strip()]
    alphabet = list(bytes_to_unicode().values())
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)


def check_conversion(
    state: dict[str, torch.Tensor], model: CLIPModel, arch: OpenAIArchitecture, activation: str, seed: int = 0
) -> dict[str, float]:
    """The lowest cosine similarity between ``model``'s embeddings and those CLIP's forward gives straight
    from ``state`` (``{"image": ..., "text": ...}``) on 4 random images and 4 random captions; a
    :class:`ConversionError` when one is below ``CHECK_COSINE``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, arch.image_size, arch.image_size, generator=generator)
    tokens = torch.randint(1, arch.vocab_size - 2, (4, arch.context_length), generator=generator)
    tokens[:, 0] = arch.vocab_size - 2  # start of text
    for row, end in enumerate(torch.randint(2, arch.context_length, (4,), generator=generator).tolist()):
        tokens[row, end], tokens[row, end + 1 :] = arch.vocab_size - 1, 0  # end of text, then open_clip's 0s
    source = {key: value.float() for key, value in state.items()}
    model = model.float().eval()
    with torch.no_grad():
        pairs = {
            "image": (
                model.get_image_features(pixel_values=images).pooler_output,
                encode_image(source, images, activation),
            ),
            "text": (
                model.get_text_features(input_ids=tokens).pooler_output,
                encode_text(source, tokens, activation),
            ),
        }
    lowest = {name: F.cosine_similarity(*pair, dim=-1).min().item() for name, pair in pairs.items()}
    if min(lowest.values()) < CHECK_COSINE:
        raise ConversionError(
            "the converted model's embeddings differ from the source's (lowest cosine: image "
            f"{lowest['image']:.6f}, text {lowest['text']:.6f}; expected >= {CHECK_COSINE}): the "
            "checkpoint's layout is not the one read"
        )
    return lowest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: str | None = None,
    bpe: str | os.PathLike | None = None,
    activation: str = "quick_gelu",
    trust_torchscript: bool = False,
    source: str | None = None,
) -> Path:
    """Convert ``checkpoint`` into an HF CLIP folder ``out_dir`` (model, processor, tokenizer) and check it
    against the source's own forward; see above. ``trust_torchscript`` allows a TorchScript archive, whose
    loading runs code from the file; ``source`` (where the checkpoint came from) is recorded."""
    if activation not in ACTIVATIONS:
        raise ConversionError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    if (tokenizer is None) == (bpe is None):
        raise ConversionError(
            "give exactly one of tokenizer (a CLIP tokenizer folder or Hub id, e.g. "
            "openai/clip-vit-base-patch32) "
            "and bpe (open_clip's bpe_simple_vocab_16e6.txt.gz)"
        )
    state = read_checkpoint(checkpoint, trust_torchscript)
    arch = infer_architecture(state)
    check_state_dict(state, arch)
    if tokenizer is not None:
        clip_tokenizer = CLIPTokenizer.from_pretrained(tokenizer, model_max_length=arch.context_length)
    else:
        clip_tokenizer = tokenizer_from_bpe(bpe, arch.context_length)
    if len(clip_tokenizer) != arch.vocab_size:
        raise ConversionError(
            f"the tokenizer has {len(clip_tokenizer)} tokens but token_embedding.weight has "
            f"{arch.vocab_size} rows"
        )
    model = CLIPModel(hf_config(arch, activation))
    model.load_state_dict(convert_state_dict(state, arch), strict=True)
    lowest = check_conversion(state, model, arch, activation)
    model.config.rsitr_source = {
        "checkpoint": Path(checkpoint).name,
        "sha256": file_sha256(Path(checkpoint)),
        "source": source,
        "activation": activation,
        "converted_with": "rsitr-convert",
        "lowest_cosine": {name: round(value, 6) for name, value in lowest.items()},
    }
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": arch.image_size},
        crop_size={"height": arch.image_size, "width": arch.image_size},
        image_mean=OPENAI_MEAN,
        image_std=OPENAI_STD,
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer).save_pretrained(out_dir)
    return out_dir


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("checkpoint", help="OpenAI-format state dict (.pt, .bin, .safetensors)")
    parser.add_argument("out_dir", help="the HF CLIPModel folder to write")
    parser.add_argument("--tokenizer", help="copy the tokenizer of this CLIP folder or Hub id")
    parser.add_argument("--bpe", help="or build it from bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument(
        "--activation",
        default="quick_gelu",
        choices=ACTIVATIONS,
        help="the MLP activation: quick_gelu (OpenAI models) or gelu (most open_clip models)",
    )
    parser.add_argument(
        "--source", help="where the checkpoint came from (a Hub repo or URL), recorded in config.json"
    )
    parser.add_argument(
        "--trust_torchscript",
        action="store_true",
        help="read a TorchScript archive (OpenAI's released .pt files); loading one RUNS CODE stored in the "
        "file, so give this only for a file whose source you trust",
    )
    args = parse_arguments(parser, argv)
    out = convert_checkpoint(
        args.checkpoint, args.out_dir, args.tokenizer, args.bpe, args.activation, args.trust_torchscript,
        args.source,
    )  # fmt: skip
    config = CLIPConfig.from_pretrained(out)
    vision, text = config.vision_config, config.text_config
    lowest = config.rsitr_source["lowest_cosine"]
    print(
        f"wrote {out}: vision {vision.hidden_size} wide x {vision.num_hidden_layers} layers, patch "
        f"{vision.patch_size}, {vision.image_size} px; text {text.hidden_size} x {text.num_hidden_layers}, "
        f"{text.max_position_embeddings} tokens; projection {config.projection_dim}; {args.activation}; "
        f"embeddings equal the source's (lowest cosine: image {lowest['image']:.6f}, text "
        f"{lowest['text']:.6f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
