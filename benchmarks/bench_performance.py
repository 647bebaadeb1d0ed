"""Performance benchmarks of rsitr_hf, measured side by side in one run and reported as ratios.

    .venv/bin/python benchmarks/bench_performance.py [--device cpu|cuda] [--batch_size N] [--out FILE.json]
        [--only train_step views evaluation ranking casts]

Sections (each measurement runs in its own process, so peak memory and compiled state are its own):
- ``train_step``: one training step (HMMC's 4 views in two batched passes + loss + backward + Adam step)
  of MRS-Adapter vs full fine-tuning at CLIP ViT-B/32 size with random weights, in fp32, bf16 autocast
  and (MRS) ``torch.compile``: median step time, peak memory (CUDA: peak allocation; CPU: peak RSS and its
  growth over the loaded model), training pairs/s.
- ``views``: HMMC's four views as two batched passes (``rsitr_hf.objectives.encode_views``) vs four separate
  passes, forward + backward, MRS-Adapter.
- ``evaluation``: embedding the distinct captions only vs every caption of the real RSICD test caption
  file (``the packaged rsitr_splits``), and embedding its 1,093 images (random pixels, 224 px).
- ``ranking``: ``retrieval_metrics`` on a 1,093 x 5,465 similarity matrix.
- ``casts``: how many dtype conversions (``aten::_to_copy``), copies and matrix products one MRS-Adapter +
  HMMC step runs under bf16 autocast, with the adapter's fp32 island as published, without it, and with the
  frozen backbone stored in bf16 instead of autocast (``torch.profiler`` counts, batch 2).

The data pipeline is measured end to end, at RSICD scale, by ``benchmarks/bench_end_to_end.py``.

Defaults: batch 8 on CPU, 256 on CUDA. Prints a markdown report; ``--out`` also writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from contextlib import contextmanager

from bench_end_to_end import publish

from rsitr_hf.data.reference import splits_dir
from rsitr_hf.utils.cli import command_parser, parse_arguments

RSICD_TEST_CAPTIONS = splits_dir() / "rsicd_precomp" / "test_caps.txt"
VOCABULARY_SIZE, TEXT_LENGTH = 49408, 32


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def timed(function, device: str, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``function()`` over ``repeats`` calls after ``warmup`` calls."""
    timings = []
    for call in range(warmup + repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        if call >= warmup:
            timings.append(time.perf_counter() - started)
    return sorted(timings)[len(timings) // 2]


def vit_b32(method: str, device: str, base_dtype=None):
    """CLIP ViT-B/32 with random weights; ``method``: ``mrs`` (MRS-Adapter, paper config) or ``full``;
    ``base_dtype``: the dtype of the base weights (the adapter stays fp32)."""
    import torch
    from peft import get_peft_model
    from transformers import CLIPConfig, CLIPModel

    import rsitr_hf

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).to(device, dtype=base_dtype)
    if method == "mrs":
        model = get_peft_model(model, rsitr_hf.MRSAdapterConfig())
    return model.train()


def random_batch(batch_size: int, device: str):
    import torch

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, 224, 224, generator=generator).to(device)
    input_ids = torch.randint(0, VOCABULARY_SIZE - 2, (batch_size, TEXT_LENGTH), generator=generator)
    input_ids[:, -1] = VOCABULARY_SIZE - 1  # eos
    return pixel_values, input_ids.to(device), torch.arange(batch_size, device=device)


def measure_train_step(
    method: str, precision: str, compile_model: bool, batch_size: int, device: str
) -> dict:
    import torch

    from rsitr_hf.objectives import encode_views, hmmc_loss

    model = vit_b32(method, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=2e-4)
    forward = torch.compile(model) if compile_model else model
    pixel_values, input_ids, image_ids = random_batch(batch_size, device)
    loaded_rss = peak_rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            views = encode_views(forward, pixel_values, {"input_ids": input_ids}, token_dropout=0.2)
        loss = hmmc_loss(views.image, views.text, views.image_aug, views.text_aug, image_ids=image_ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    compile_started = time.perf_counter()
    step()  # warm-up (and compilation)
    first_step_seconds = time.perf_counter() - compile_started
    seconds = timed(step, device, repeats=3, warmup=1 if compile_model else 0)
    result = {
        "trainable_parameters": sum(p.numel() for p in trainable),
        "step_seconds": seconds,
        "first_step_seconds": first_step_seconds,
        "pairs_per_second": batch_size / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_growth_mb": peak_rss_mb() - loaded_rss,
    }
    if device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


@contextmanager
def all_rows_dropout(encoder, p: float):
    import torch.nn.functional as F

    def hook(module, args, kwargs):
        kwargs["inputs_embeds"] = F.dropout(kwargs["inputs_embeds"], p, training=module.training)
        return args, kwargs

    handle = encoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def measure_views(mode: str, batch_size: int, device: str) -> dict:
    import torch.nn.functional as F

    from rsitr_hf.objectives import encode_views, hmmc_loss, unwrap_clip

    model = vit_b32("mrs", device)
    clip = unwrap_clip(model)
    pixel_values, input_ids, image_ids = random_batch(batch_size, device)

    def separate():
        image = model.get_image_features(pixel_values=pixel_values).pooler_output
        text = model.get_text_features(input_ids=input_ids).pooler_output
        with all_rows_dropout(clip.vision_model.encoder, 0.2):
            image_aug = model.get_image_features(pixel_values=pixel_values).pooler_output
        with all_rows_dropout(clip.text_model.encoder, 0.2):
            text_aug = model.get_text_features(input_ids=input_ids).pooler_output
        return [F.normalize(e, dim=-1) for e in (image, text, image_aug, text_aug)]

    def batched():
        views = encode_views(model, pixel_values, {"input_ids": input_ids}, token_dropout=0.2)
        return views.image, views.text, views.image_aug, views.text_aug

    def step():
        image, text, image_aug, text_aug = (batched if mode == "batched" else separate)()
        hmmc_loss(image, text, image_aug, text_aug, image_ids=image_ids).backward()
        model.zero_grad(set_to_none=True)

    return {"step_seconds": timed(step, device, repeats=3)}


def rsicd_test_captions() -> list[str]:
    lines = RSICD_TEST_CAPTIONS.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines]


def measure_evaluation(batch_size: int, device: str, precision: str) -> dict:
    """Text embedding of all vs distinct RSICD test captions (sorted by length, padded per batch) and
    image embedding of 1,093 images: the work of one RSICD test evaluation."""
    import torch

    from rsitr_hf.demo.tiny_clip import build_word_tokenizer

    model = vit_b32("mrs", device).eval()
    captions = rsicd_test_captions()
    distinct = list(dict.fromkeys(captions))
    # CLIP's tokenizer class with a BPE vocabulary of the captions' words, built offline (OpenAI's BPE
    # splits rare words into more tokens, so real captions are slightly longer)
    tokenizer = build_word_tokenizer(sorted({w for c in captions for w in c.lower().split()}))

    @torch.no_grad()
    def embed_texts(texts: list[str]) -> None:
        ordered = sorted(texts, key=len)
        for start in range(0, len(ordered), batch_size):
            inputs = tokenizer(ordered[start : start + batch_size], padding="longest", return_tensors="pt")
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                model.get_text_features(**inputs)

    @torch.no_grad()
    def embed_images(count: int) -> None:
        generator = torch.Generator().manual_seed(0)
        for start in range(0, count, batch_size):
            pixels = torch.randn(min(batch_size, count - start), 3, 224, 224, generator=generator).to(device)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                model.get_image_features(pixel_values=pixels)

    embed_texts(distinct[:batch_size])  # warm-up
    return {
        "captions": len(captions),
        "distinct_captions": len(distinct),
        "all_captions_seconds": timed(lambda: embed_texts(captions), device, repeats=1, warmup=0),
        "distinct_captions_seconds": timed(lambda: embed_texts(distinct), device, repeats=1, warmup=0),
        "images": len(captions) // 5,
        "images_seconds": timed(lambda: embed_images(len(captions) // 5), device, repeats=1, warmup=0),
    }


def measure_ranking() -> dict:
    import numpy as np
    import torch

    from rsitr_hf.evaluation import retrieval_metrics

    images = len(rsicd_test_captions()) // 5
    rng = np.random.default_rng(0)
    similarity = torch.from_numpy(rng.standard_normal((images, 5 * images)).astype(np.float32))
    caption_image_ids = np.repeat(np.arange(images), 5)
    seconds = timed(lambda: retrieval_metrics(similarity, caption_image_ids), "cpu", repeats=5)
    return {"images": images, "captions": 5 * images, "seconds": seconds}


def measure_casts(variant: str, device: str) -> dict:
    """Operator counts of one MRS-Adapter + HMMC training step at ViT-B/32 size (batch 2, 32 tokens), from
    ``torch.profiler``: ``island`` is the adapter as published (computes in fp32 under bf16 autocast),
    ``no island`` lets autocast run the adapter in bf16 too, ``bf16 backbone`` stores the frozen weights in
    bf16 and runs without autocast (the adapter keeps its fp32 island)."""
    import collections

    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    import rsitr_hf.tuners.mrs_adapter.layer as mrs_layer
    from rsitr_hf.objectives import encode_views, hmmc_loss

    if variant == "no island":

        def forward(self, hidden_states, tower):
            bottleneck = self.dropout(F.relu(self.down[tower](hidden_states)))
            update = torch.cat([self.up[tower](bottleneck), self.shared_up(bottleneck)], dim=-1)
            return update.to(hidden_states.dtype)

        mrs_layer.MRSAdapter.forward = forward
    model = vit_b32("mrs", device, base_dtype=torch.bfloat16 if variant == "bf16 backbone" else None)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    pixel_values, input_ids, image_ids = random_batch(2, device)
    if variant == "bf16 backbone":
        pixel_values = pixel_values.bfloat16()

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=variant != "bf16 backbone"):
            views = encode_views(model, pixel_values, {"input_ids": input_ids}, token_dropout=0.2)
        hmmc_loss(views.image, views.text, views.image_aug, views.text_aug, image_ids=image_ids).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as profiler:
        step()
    counts = collections.Counter({event.key: event.count for event in profiler.key_averages()})
    return {
        op: counts[op] for op in ("aten::_to_copy", "aten::copy_", "aten::cat", "aten::mm", "aten::addmm")
    }


def run_isolated(arguments: list[str]) -> dict:
    """Run one measurement in a fresh Python process; returns its JSON result."""
    command = [sys.executable, __file__, "--measure", *arguments]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure(kind: str, args) -> dict:
    if kind == "train_step":
        return measure_train_step(args.method, args.precision, args.compile, args.batch_size, args.device)
    if kind == "views":
        return measure_views(args.mode, args.batch_size, args.device)
    if kind == "evaluation":
        return measure_evaluation(args.eval_batch_size, args.device, args.precision)
    if kind == "ranking":
        return measure_ranking()
    return measure_casts(args.variant, args.device)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def peak_mb(result: dict) -> float:
    return result.get("peak_cuda_mb", result["peak_rss_mb"])


def report(results: dict, args) -> str:
    lines = [f"device: {args.device_name}; batch {args.batch_size}; torch threads {args.threads}", ""]
    growth_key = "peak_cuda_mb" if args.device == "cuda" else "rss_growth_mb"
    steps = results.get("train_step")
    if steps:
        lines += ["| train step | trainable | s/step | pairs/s | peak memory (MB) | memory growth (MB) |"]
        lines += ["|---|---|---|---|---|---|"]
        for name, r in steps.items():
            lines.append(
                f"| {name} | {r['trainable_parameters']:,} | {r['step_seconds']:.3f} | "
                f"{r['pairs_per_second']:.1f} | {peak_mb(r):,.0f} | {r['rss_growth_mb']:,.0f} |"
            )
        mrs, full = steps["mrs fp32"], steps["full fp32"]
        time_ratio = ratio(mrs["step_seconds"], full["step_seconds"])
        growth_ratio = ratio(mrs[growth_key], full[growth_key])
        peak_ratio = ratio(peak_mb(mrs), peak_mb(full))
        lines += [
            "",
            f"- MRS / full, fp32: step time {time_ratio} (goal <= 0.45x); {growth_key} {growth_ratio}, ",
        ]
        lines[-1] += f"peak {peak_ratio} (goal <= 0.5x)"
        if "mrs bf16" in steps:
            mrs_bf16 = ratio(steps["mrs bf16"]["step_seconds"], mrs["step_seconds"])
            full_bf16 = ratio(steps["full bf16"]["step_seconds"], full["step_seconds"])
            lines.append(f"- bf16 / fp32 step time: MRS {mrs_bf16}, full {full_bf16}")
        if "mrs fp32 compiled" in steps:
            compiled = steps["mrs fp32 compiled"]
            compile_ratio = ratio(compiled["step_seconds"], mrs["step_seconds"])
            lines.append(
                f"- torch.compile / eager, MRS fp32: step time {compile_ratio}"
                f" (first step, with compilation: {compiled['first_step_seconds']:.0f} s)"
            )
    if "views" in results:
        batched, separate = (results["views"][mode]["step_seconds"] for mode in ("batched", "separate"))
        lines.append(
            f"- HMMC views, MRS forward + backward: 2 batched passes {batched:.3f} s, "
            f"4 separate passes {separate:.3f} s: {ratio(batched, separate)}"
        )
    for precision, e in results.get("evaluation", {}).items():
        distinct, every, images = (
            e["distinct_captions_seconds"],
            e["all_captions_seconds"],
            e["images_seconds"],
        )
        lines.append(
            f"- RSICD test evaluation, {precision}: text {distinct:.1f} s for the {e['distinct_captions']:,} "
            f"distinct captions vs {every:.1f} s for all {e['captions']:,} ({ratio(distinct, every)}); "
            f"{e['images']:,} images {images:.1f} s; together {distinct + images:.1f} s"
        )
    if "ranking" in results:
        r = results["ranking"]
        lines.append(f"- ranking {r['images']:,} x {r['captions']:,}: {r['seconds'] * 1000:.0f} ms")
    if "casts" in results:
        counts = results["casts"]
        ops = list(next(iter(counts.values())))
        lines += [
            "",
            "| MRS + HMMC step, ops per step | " + " | ".join(ops) + " |",
            "|---" * (len(ops) + 1) + "|",
        ]
        lines += [f"| {name} | " + " | ".join(str(c[op]) for op in ops) + " |" for name, c in counts.items()]
    return "\n".join(lines)


def main() -> None:
    import torch

    parser = command_parser(__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument(
        "--only", nargs="+", default=["train_step", "views", "evaluation", "ranking", "casts"]
    )
    parser.add_argument("--no_compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--out", help="also write the results as JSON")
    # one isolated measurement (internal)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parse_arguments(parser)
    args.batch_size = args.batch_size or (256 if args.device == "cuda" else 8)
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return

    common = [
        "--device",
        args.device,
        "--batch_size",
        str(args.batch_size),
        "--eval_batch_size",
        str(args.eval_batch_size),
    ]
    results = {}
    if "train_step" in args.only:
        variants = {f"{m} {p}": [m, p, False] for p in ("fp32", "bf16") for m in ("mrs", "full")}
        if not args.no_compile:
            variants["mrs fp32 compiled"] = ["mrs", "fp32", True]
        results["train_step"] = {}
        for name, (method, precision, compiled) in variants.items():
            extra = ["--method", method, "--precision", precision, *(["--compile"] if compiled else [])]
            results["train_step"][name] = run_isolated(["train_step", *common, *extra])
            print(name, json.dumps(results["train_step"][name]), flush=True)
    if "views" in args.only:
        results["views"] = {
            mode: run_isolated(["views", *common, "--mode", mode]) for mode in ("batched", "separate")
        }
    if "evaluation" in args.only:
        results["evaluation"] = {
            p: run_isolated(["evaluation", *common, "--precision", p]) for p in ("fp32", "bf16")
        }
    if "ranking" in args.only:
        results["ranking"] = run_isolated(["ranking", *common])
    if "casts" in args.only:
        results["casts"] = {
            variant: run_isolated(["casts", *common, "--variant", variant])
            for variant in ("island", "no island", "bf16 backbone")
        }
    publish(results, args, report)


if __name__ == "__main__":
    main()
