"""One training step of MRS-Adapter + HMMC vs full fine-tuning at real CLIP ViT-B/32 size (random weights).

A step = the 4 views (clean + augmented, one batched forward per tower) + HMMC + backward + Adam step,
for both methods (full fine-tuning uses the same views and loss, with every weight trainable). Each
method runs in its own process so that peak memory is its own: on CPU the peak resident set size
(and its growth over the loaded model), on CUDA ``torch.cuda.max_memory_allocated``.

Run: .venv/bin/python benchmarks/bench_train_step.py [--batch-size 8] [--steps 3] [--text-length 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_method(method: str, batch_size: int, steps: int, text_length: int, device: str) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import CLIPConfig, CLIPModel

    import rsitr_hf
    from rsitr_hf.losses import hmmc_loss
    from rsitr_hf.views import encode_views

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).to(device)
    if method == "mrs":
        model = get_peft_model(model, rsitr_hf.MRSAdapterConfig())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=2e-4)
    pixel_values = torch.randn(batch_size, 3, 224, 224, device=device)
    input_ids = torch.randint(0, 49000, (batch_size, text_length), device=device)
    input_ids[:, -1] = model.config.text_config.eos_token_id
    image_ids = torch.arange(batch_size, device=device)
    loaded_rss = peak_rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    timings = []
    for step in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        views = encode_views(model, pixel_values, input_ids, None, token_dropout=0.2)
        loss = hmmc_loss(views.image, views.text, views.image_aug, views.text_aug, image_ids=image_ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms up
            timings.append(time.perf_counter() - started)
    result = {
        "method": method,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "step_seconds": sorted(timings)[len(timings) // 2],
        "peak_rss_mb": peak_rss_mb(),
        "training_rss_growth_mb": peak_rss_mb() - loaded_rss,
    }
    if device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--text-length", type=int, default=32)
    parser.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    parser.add_argument("--method", choices=("mrs", "full"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_method(args.method, args.batch_size, args.steps, args.text_length, args.device)))
        return
    results = {}
    for method in ("mrs", "full"):
        command = [
            sys.executable,
            __file__,
            "--method",
            method,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--text-length",
            str(args.text_length),
            "--device",
            args.device,
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[method] = json.loads(output.strip().splitlines()[-1])
        print(json.dumps(results[method]))
    memory_key = "peak_cuda_mb" if args.device == "cuda" else "training_rss_growth_mb"
    print(
        f"device {args.device}, batch {args.batch_size}, text length {args.text_length}: "
        f"MRS/full step time {results['mrs']['step_seconds'] / results['full']['step_seconds']:.2f}x, "
        f"{memory_key} {results['mrs'][memory_key] / results['full'][memory_key]:.2f}x, "
        f"peak RSS {results['mrs']['peak_rss_mb'] / results['full']['peak_rss_mb']:.2f}x"
    )


if __name__ == "__main__":
    main()
