"""Time the recall computation on an RSICD-sized test matrix (1,093 images x 5,465 captions).

Run: .venv/bin/python benchmarks/bench_ranking.py [--repeats 5]
"""

import argparse
import time

import numpy as np
import torch

from rsitr_hf.evaluation import retrieval_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1093)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    similarity = torch.from_numpy(rng.standard_normal((args.images, 5 * args.images)).astype(np.float32))
    caption_image_ids = np.repeat(np.arange(args.images), 5)
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        retrieval_metrics(similarity, caption_image_ids)
        timings.append(time.perf_counter() - started)
    print(
        f"retrieval_metrics on {args.images} x {5 * args.images}: "
        f"best {min(timings) * 1000:.0f} ms, median {sorted(timings)[len(timings) // 2] * 1000:.0f} ms "
        f"over {args.repeats} runs ({torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
