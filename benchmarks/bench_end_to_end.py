"""End-to-end training speed and evaluation time on an RSICD-shaped task, through the real ``train()``.

    python benchmarks/bench_end_to_end.py [--device cpu|cuda] [--work_dir DIR]
        [--methods mrs posapl lora full harma] [--only pipeline train evaluation] [--batch_size N] [--steps N]
        [--workers N ...] [--pipeline_batch_size N] [--compile] [--pos_model TAGGER.pt] [--toy]
        [--out FILE.json]

The task (built once in ``--work_dir``): the real RSICD split files (packaged ``rsitr_splits/rsicd_precomp``:
9,828 train + 1,093 test images, 54,605 captions), one synthetic 224-px JPEG per file name (rendered aerial
scenes), and a CLIP with ViT-B/32's shapes (vision 768 wide, text 512, 12 layers, patch 32) and random
weights over the captions' words. Throughput and memory at this scale are the real ones; accuracy means
nothing (random weights).

Sections, each measurement in a fresh process (its own Accelerate state, compiled graphs, peak memory):

- ``pipeline``: training pairs/s the data pipeline delivers, everything the CPU does per batch up to uint8
  tensors ready to move to the device (shuffled caption pairs, pixels gathered from the image cache or
  decoded, captions padded), at the GPU recipes' batch of 256 (``--pipeline_batch_size``) whatever the
  device, with 0, 1, 2 ... workers; and the time to build the image cache.
- ``train``: per method, the real ``train()`` for ``--steps`` optimiser steps (``training.max_steps``):
  end-to-end pairs/s (batch / the run's median wall time per step, data loading included, evaluations
  excluded) next to the model-only pairs/s of the same step (the loop's own set-up functions and
  ``TrainingStep``, on one batch kept on the device). Their ratio is the pipeline's efficiency.
- ``evaluation``: one RSICD test evaluation (1,093 images, 5,465 captions) of the MRS-Adapter model with
  the images read from the cache: cold (the first in a fresh process) and warm (the next).

Defaults: batch 256, bf16 and 30 steps on CUDA; batch 8, bf16 and 20 steps on the CPU. Methods: ``mrs``
(MRS-Adapter + HMMC), ``posapl`` (POSAPL's RSICD recipe; needs a POS tagger: ``--pos_model``,
``$RSITR_POS_MODEL``, or one trained offline from UD English-EWT into the work dir, about 3 minutes),
``lora`` (LoRA r=8 + HMMC), ``full`` (full fine-tuning + HMMC), ``harma`` (HarMA with its loss and the
release's AdamW). ``--toy``: the first 48 train and 16 test images and a tiny CLIP, for dry runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rsitr_hf.data.reference import splits_dir, ud_english_dir
from rsitr_hf.utils.cli import command_parser, parse_arguments

RSICD_SPLITS = splits_dir() / "rsicd_precomp"
SPLIT_FILES = ("train_caps.txt", "train_filename.txt", "test_caps.txt", "test_filename.txt")
METHODS = {
    "mrs": {"method": {"name": "mrs_adapter"}, "loss": {"name": "hmmc"}},
    "posapl": {
        "method": {
            "name": "pos_prompt",
            "config": {"adapter_dim": 128, "adapter_heads": 8, "pos_adapter_dim": 128, "fusion": "parallel"},
        },
        "loss": {"name": "posapl", "margin": 0.1},
        "data": {"augment": True},
        "optimizer": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 0.01, "betas": [0.9, 0.98]},
    },
    "lora": {"method": {"name": "lora", "config": {"r": 8}}, "loss": {"name": "hmmc"}},
    "full": {"method": {"name": "full"}, "loss": {"name": "hmmc"}, "optimizer": {"lr": 1.0e-5}},
    "harma": {
        "method": {"name": "harma"},
        "loss": {"name": "harma", "margin": 0.2, "power": 2.0},
        "data": {"augment": True},
        "optimizer": {"name": "adamw", "lr": 4.0e-4, "weight_decay": 0.04, "betas": [0.9, 0.98]},
    },
}
TOY_IMAGES = {"train": 48, "test": 16}  # --toy: the first images of each split, and a small CLIP (12 layers)


# --- The task ------------------------------------------------------------------------------------------


def write_image(job: tuple[str, int, str]) -> None:
    from rsitr_hf.demo.synthetic import make_example

    path, index, split = job
    image, _, _ = make_example(0, split, index, "target", 224)
    image.save(path, quality=90)


def build_task(work_dir: Path, toy: bool = False) -> tuple[Path, Path]:
    """``(data folder, model folder)`` of the RSICD-shaped task, built on first use; ``toy``: the first
    ``TOY_IMAGES`` of each split with a tiny CLIP (for dry runs on a CPU)."""
    data = work_dir / ("toy" if toy else "") / "rsicd_precomp"
    images = data / "rsicd_images"
    if not (data / "done").is_file():
        images.mkdir(parents=True, exist_ok=True)
        for name in SPLIT_FILES:
            lines = (RSICD_SPLITS / name).read_text(encoding="utf-8").splitlines()
            if toy:  # train: one file name per image, five captions; test: one file name per caption
                per_image = 5 if name == "train_caps.txt" or name.startswith("test") else 1
                lines = lines[: per_image * TOY_IMAGES[name.split("_")[0]]]
            (data / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        jobs = []
        for split in ("train", "test"):
            names = (data / f"{split}_filename.txt").read_text(encoding="utf-8").split()
            for index, name in enumerate(dict.fromkeys(names)):
                jobs.append((str(images / name), index, split))
        started = time.perf_counter()
        with ProcessPoolExecutor() as pool:
            list(pool.map(write_image, jobs, chunksize=64))
        print(
            f"wrote {len(jobs):,} synthetic 224-px JPEGs in {time.perf_counter() - started:.0f} s", flush=True
        )
        (data / "done").write_text("")
    model = work_dir / ("tiny_clip" if toy else "vit_b32_shaped")
    if not (model / "config.json").is_file():
        from rsitr_hf.demo.tiny_clip import save_tiny_clip

        captions = (data / "train_caps.txt").read_text(encoding="utf-8").split("\n")
        words = sorted({word for caption in captions for word in caption.lower().split() if word.isascii()})
        if toy:
            save_tiny_clip(
                model, words, seed=0, text_width=256, vision_width=256, projection_dim=128, num_layers=12,
                num_heads=4, image_size=64, patch_size=16,
            )  # fmt: skip
            return data, model
        save_tiny_clip(
            model, words, seed=0, text_width=512, vision_width=768, projection_dim=512, num_layers=12,
            num_heads=8, image_size=224, patch_size=32,
        )  # fmt: skip
    return data, model


def pos_tagger(work_dir: Path, given: str | None) -> str:
    """A POS tagger for POSAPL: ``--pos_model``, ``$RSITR_POS_MODEL``, or one trained offline once."""
    if given or os.environ.get("RSITR_POS_MODEL"):
        return given or os.environ["RSITR_POS_MODEL"]
    from rsitr_hf.data.pos_tagger import train_small_tagger

    tagger = work_dir / "pos_tagger" / "tagger.pt"
    if not tagger.is_file():
        ewt = ud_english_dir()
        train_small_tagger(ewt / "en_ewt-ud-test.conllu", ewt / "en_ewt-ud-dev.conllu", tagger.parent)
    return str(tagger)


def recipe_values(method: str, args, data: Path, model: Path, output_dir: Path) -> dict:
    """The benchmark recipe of ``method``: the method's sections over the shared ones."""
    values = {
        "base_model": str(model),
        "output_dir": str(output_dir),
        "data": {"path": str(data), "validation_fraction": 0.01},
        "schedule": {"name": "cosine"},
        "training": {
            "epochs": 1,
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "eval_batch_size": args.eval_batch_size,
            "mixed_precision": args.precision,
            "compile": True if args.compile else None,
            "num_workers": args.train_workers if args.train_workers == "auto" else int(args.train_workers),
        },
    }
    for section, entries in METHODS[method].items():
        values[section] = {**values.get(section, {}), **entries}
    if method == "posapl":
        tagger = pos_tagger(args.work_dir, args.pos_model)
        values["text"] = {"pos_model": tagger, "pos_cache": str(args.work_dir / "pos")}
    return values


# --- Measurements (each in its own process) -------------------------------------------------------------


def measure_pipeline(args, data: Path, model: Path) -> dict:
    """Pairs/s of the training loader alone (shuffled, batch ``--pipeline_batch_size``) over
    ``--pipeline_batches`` batches."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import CLIPProcessor

    from rsitr_hf.data import load_rsitr
    from rsitr_hf.data.pixels import DecodedPixels, cached_pixels
    from rsitr_hf.data.preprocessing import RetrievalCollator, caption_pairs
    from rsitr_hf.data.text_inputs import TextInputs

    processor = CLIPProcessor.from_pretrained(model)
    train = load_rsitr(data, validation_fraction=0.0)["train"]
    started = time.perf_counter()
    if args.cached:
        pixels = cached_pixels(train, processor.image_processor)
    else:
        pixels = DecodedPixels(train, processor.image_processor)
    prepared = time.perf_counter() - started
    text_inputs = TextInputs(processor.tokenizer)
    pairs = caption_pairs(train, text_inputs)
    loader = DataLoader(
        pairs,
        batch_size=args.pipeline_batch_size,
        shuffle=True,
        num_workers=args.workers[0],
        persistent_workers=args.workers[0] > 0,
        collate_fn=RetrievalCollator(pixels, text_inputs),
        generator=torch.Generator().manual_seed(0),
    )
    batches = iter(loader)
    next(batches)  # workers started, first batch in
    started, count = time.perf_counter(), 0
    for _, batch in zip(range(args.pipeline_batches), batches, strict=False):
        count += batch["pixels"].shape[0]
    return {"pairs_per_second": count / (time.perf_counter() - started), "prepare_seconds": prepared}


def measure_train(args, data: Path, model: Path) -> dict:
    from rsitr_hf.training import train
    from rsitr_hf.training.recipe import Recipe
    from rsitr_hf.utils.config import build

    with tempfile.TemporaryDirectory() as output_dir:
        recipe = build(Recipe, recipe_values(args.method, args, data, model, Path(output_dir)))
        result = train(recipe)
    cost = result.cost
    return {
        "pairs_per_second": cost["batch_size"] / cost["seconds_per_step"],
        "seconds_per_step": cost["seconds_per_step"],
        "cost": cost,
    }


def measure_model_only(args, data: Path, model: Path) -> dict:
    """The same optimiser step as ``train()``'s (its set-up, step and optimiser, from the same functions), on
    one batch already on the device."""
    import torch
    from transformers import CLIPProcessor

    from rsitr_hf.data.text_inputs import text_inputs_of
    from rsitr_hf.objectives.table import get_loss
    from rsitr_hf.training.data import image_transform, prepare_data, training_loader
    from rsitr_hf.training.recipe import Recipe
    from rsitr_hf.training.setup import build_model, build_optimizer, create_accelerator, method_config
    from rsitr_hf.training.step import TrainingStep
    from rsitr_hf.tuners import get_method
    from rsitr_hf.utils.config import build

    with tempfile.TemporaryDirectory() as output_dir:
        recipe = build(Recipe, recipe_values(args.method, args, data, model, Path(output_dir)))
        method = get_method(recipe.method.name)
        accelerator = create_accelerator(recipe)
        clip = build_model(recipe, method)
        processor = CLIPProcessor.from_pretrained(recipe.base_model)
        text_inputs = text_inputs_of(method, processor.tokenizer, method_config(clip), recipe.text.options)
        run_data = prepare_data(recipe, processor, text_inputs, accelerator)
        loader = training_loader(recipe, run_data, accelerator.device)
        optimizer = build_optimizer(recipe, clip)
        clip, optimizer, loader = accelerator.prepare(clip, optimizer, loader)
        step = TrainingStep(
            clip, get_loss(recipe.loss.name), recipe.loss.options, image_transform(recipe, processor)
        )

        def optimizer_step(batch: dict) -> torch.Tensor:
            with accelerator.accumulate(clip):
                loss = step(batch, 0)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            return loss.detach()

        batch = next(iter(loader))
        clip.train()
        started = time.perf_counter()
        optimizer_step(batch).item()  # with --compile: compiles
        first_step = time.perf_counter() - started
        for _ in range(args.warmup - 1):
            optimizer_step(batch)
        loss = optimizer_step(batch)
        loss.item()
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = optimizer_step(batch)
        loss.item()  # waits for the device
        seconds = (time.perf_counter() - started) / args.steps
        peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "pairs_per_second": args.batch_size / seconds,
        "seconds_per_step": seconds,
        "first_step_seconds": first_step,
        "peak_cuda_mb": peak,
    }


def measure_evaluation(args, data: Path, model: Path) -> dict:
    """Cold and warm RSICD test evaluation of the MRS-Adapter model, images from the cache."""
    import torch
    from peft import get_peft_model
    from transformers import CLIPModel, CLIPProcessor

    import rsitr_hf
    from rsitr_hf.data import load_rsitr
    from rsitr_hf.data.pixels import cached_pixels
    from rsitr_hf.evaluation import evaluate_retrieval

    test = load_rsitr(data, validation_fraction=0.0)["test"]
    processor = CLIPProcessor.from_pretrained(model)
    pixels = cached_pixels(test, processor.image_processor)  # built when a run starts, not per evaluation
    clip = (
        get_peft_model(CLIPModel.from_pretrained(model), rsitr_hf.MRSAdapterConfig()).to(args.device).eval()
    )

    def evaluate() -> float:
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            evaluate_retrieval(clip, test, processor, batch_size=args.eval_batch_size, pixels=pixels)
        return time.perf_counter() - started

    cold = evaluate()
    warm = sorted(evaluate() for _ in range(3))[1]
    return {"images": len(test), "captions": 5 * len(test), "cold_seconds": cold, "warm_seconds": warm}


MEASUREMENTS = {
    "pipeline": measure_pipeline,
    "train": measure_train,
    "model_only": measure_model_only,
    "evaluation": measure_evaluation,
}


def run_isolated(kind: str, args, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--measure", kind, *common_arguments(args), *extra]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{kind} {' '.join(extra)} failed:\n{completed.stderr[-4000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(kind, " ".join(extra), json.dumps(result), flush=True)
    return result


def common_arguments(args) -> list[str]:
    values = [
        "--device", args.device, "--work_dir", str(args.work_dir), "--batch_size", str(args.batch_size),
        "--eval_batch_size", str(args.eval_batch_size), "--steps", str(args.steps),
        "--precision", args.precision, "--train_workers", str(args.train_workers),
        "--pipeline_batches", str(args.pipeline_batches),
        "--pipeline_batch_size", str(args.pipeline_batch_size),
    ]  # fmt: skip
    if args.compile:
        values.append("--compile")
    if args.pos_model:
        values += ["--pos_model", args.pos_model]
    if args.toy:
        values.append("--toy")
    return values


# --- Report --------------------------------------------------------------------------------------------


def device_description(device: str) -> str:
    """The GPU's name, or the CPU's model, core count and whether it computes bf16 natively."""
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    from rsitr_hf.demo.readme import cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    bf16 = "native bf16" if flags & {"avx512_bf16", "amx_bf16"} else "no bf16 instructions (bf16 is emulated)"
    return f"CPU {model or 'unknown'}, {os.cpu_count()} cores, {bf16}"


def report(results: dict, args) -> str:
    lines = [
        f"device: {args.device_name}; batch {args.batch_size}; {args.precision}; "
        f"compile {'on' if args.compile else 'off'}; {args.steps} steps; torch threads {args.threads}",
        "",
    ]
    if "pipeline" in results:
        lines += [
            f"| data pipeline (up to uint8 batches of {args.pipeline_batch_size}) | pairs/s |",
            "|---|---|",
        ]
        lines += [f"| {name} | {r['pairs_per_second']:,.0f} |" for name, r in results["pipeline"].items()]
        cache = results["pipeline"].get("image cache, workers 0")
        if cache:
            lines.append(
                f"\nimage cache of the 9,828 train images: built in {cache['prepare_seconds']:.0f} s"
            )
        lines.append("")
    if "train" in results:
        lines += [
            "| method | trainable | end to end pairs/s | model only pairs/s | end to end / model only | "
            "workers | peak memory (MB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, r in results["train"].items():
            e2e, alone, cost = r["end_to_end"], r["model_only"], r["end_to_end"]["cost"]
            efficiency = e2e["pairs_per_second"] / alone["pairs_per_second"]
            lines.append(
                f"| {method} | {cost['trainable_parameters']:,} | {e2e['pairs_per_second']:,.1f} | "
                f"{alone['pairs_per_second']:,.1f} | {efficiency:.2f} | {cost['num_workers']} | "
                f"{cost['peak_memory_mb']:,.0f} |"
            )
        lines.append("")
    if "evaluation" in results:
        e = results["evaluation"]
        lines.append(
            f"RSICD test evaluation ({e['images']:,} images, {e['captions']:,} captions, MRS-Adapter, images "
            f"from the cache): cold {e['cold_seconds']:.2f} s, warm {e['warm_seconds']:.2f} s"
        )
    return "\n".join(lines)


def publish(results: dict, args, make_report) -> None:
    """Print ``make_report(results, args)`` and, with ``--out``, write it with the results as JSON."""
    import torch

    args.device_name = device_description(args.device)
    args.threads = torch.get_num_threads()
    text = make_report(results, args)
    print(text)
    if args.out:
        record = {"device": args.device_name, "batch_size": args.batch_size, "results": results}
        Path(args.out).write_text(json.dumps({**record, "report": text}, indent=2))


def main() -> None:
    import torch

    parser = command_parser(__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/bench_end_to_end"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--only",
        nargs="+",
        default=["pipeline", "train", "evaluation"],
        choices=["pipeline", "train", "evaluation"],
    )
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--eval_batch_size", type=int)
    parser.add_argument("--steps", type=int, help="optimiser steps per run (default: 30 on CUDA, 20 on CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="model-only steps before timing")
    parser.add_argument("--precision", default="bf16", choices=["no", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="training.compile: true for every run")
    parser.add_argument("--train_workers", default="auto", help="training.num_workers of the train runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="pipeline section")
    parser.add_argument("--pipeline_batches", type=int, default=40, help="batches timed per pipeline run")
    parser.add_argument(
        "--pipeline_batch_size", type=int, default=256, help="pipeline section (the GPU recipes' batch)"
    )
    parser.add_argument("--pos_model", help="stanza tagger .pt for POSAPL")
    parser.add_argument("--toy", action="store_true", help=f"a toy task ({TOY_IMAGES} images, tiny CLIP)")
    parser.add_argument("--out", help="also write the results as JSON")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)
    args = parse_arguments(parser)
    on_gpu = args.device == "cuda"
    args.batch_size = args.batch_size or (256 if on_gpu else 8)
    args.eval_batch_size = args.eval_batch_size or (256 if on_gpu else 64)
    args.steps = args.steps or (30 if on_gpu else 20)
    args.work_dir = args.work_dir.resolve()
    data, model = build_task(args.work_dir, args.toy)
    if args.measure:
        print(json.dumps(MEASUREMENTS[args.measure](args, data, model)))
        return

    results = {}
    if "pipeline" in args.only:
        results["pipeline"] = {}
        for cached in (True, False):
            for workers in args.workers:
                name = f"{'image cache' if cached else 'decoding JPEGs'}, workers {workers}"
                extra = ["--workers", str(workers), *(["--cached"] if cached else [])]
                results["pipeline"][name] = run_isolated("pipeline", args, extra)
    if "train" in args.only:
        results["train"] = {
            method: {
                "end_to_end": run_isolated("train", args, ["--method", method]),
                "model_only": run_isolated("model_only", args, ["--method", method]),
            }
            for method in args.methods
        }
    if "evaluation" in args.only:
        results["evaluation"] = run_isolated("evaluation", args, [])
    publish(results, args, report)


if __name__ == "__main__":
    main()
