"""The offline demo (``rsitr-demo``): synthetic RS data in the seed layout, a tiny local CLIP, and its
zero-shot retrieval recall on the test split. Needs no network.

Steps: write a synthetic target-domain dataset with :mod:`rsitr_hf.data.synthetic` (skipped when it
exists), build a tiny CLIP model directory with :mod:`rsitr_hf.tiny_clip` (skipped when it exists),
load the data with :func:`rsitr_hf.data.load_rsitr`, embed the test split and print the recalls.
Adapter training on top of this base arrives with ``train_accelerate.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import CLIPModel, CLIPProcessor

from .data import load_rsitr
from .data.synthetic import vocabulary, write_seed_layout
from .evaluation import METRIC_KEYS, evaluate_retrieval
from .tiny_clip import save_tiny_clip


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table with one row per named result and one column per metric key."""
    header = "| model | " + " | ".join(METRIC_KEYS) + " |"
    rule = "|---|" + "---|" * len(METRIC_KEYS)
    body = [
        f"| {name} | " + " | ".join(f"{metrics[key]:.2f}" for key in METRIC_KEYS) + " |"
        for name, metrics in rows.items()
    ]
    return "\n".join([header, rule, *body])


def run_demo(
    output_dir: str | Path = "outputs/demo",
    num_train: int = 300,
    num_test: int = 100,
    image_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Run the demo and return the zero-shot test metrics."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    data_dir = output_dir / "data" / "synthrs_precomp"
    if not (data_dir / "test_caps.txt").is_file():
        write_seed_layout(output_dir / "data", "synthrs", num_train, num_test, seed, "target", image_size)
    base_dir = output_dir / "tiny-clip-base"
    if not (base_dir / "config.json").is_file():
        save_tiny_clip(base_dir, vocabulary(), seed=seed)

    dataset = load_rsitr(data_dir, validation_fraction=0.2, seed=seed)
    model = CLIPModel.from_pretrained(base_dir)
    processor = CLIPProcessor.from_pretrained(base_dir)
    metrics = evaluate_retrieval(model, dataset["test"], processor, batch_size=64)

    print(f"data: {data_dir} ({', '.join(f'{k}={len(v)}' for k, v in dataset.items())} images)")
    print(
        f"base: {base_dir} (randomly initialised tiny CLIP; adapter training comes with train_accelerate.py)"
    )
    print(format_table({"zero-shot": metrics}))
    (output_dir / "zero_shot_metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"done in {time.perf_counter() - started:.1f} s")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run_demo(args.output_dir, args.num_train, args.num_test, args.image_size, args.seed)


if __name__ == "__main__":
    main()
