"""Drawing training examples from several datasets at chosen rates.

:class:`EpochWeightedSampler` is torch's ``WeightedRandomSampler`` with a draw fixed by ``(seed, epoch)``:
every process of a distributed run draws the same sequence (Accelerate shards it into batches per process), a
resumed run draws the epoch it stopped in again, and ``set_epoch`` (which Accelerate calls through the
prepared loader) moves to the next epoch's draw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


class EpochWeightedSampler(WeightedRandomSampler):
    """``num_samples`` indices drawn with replacement, index ``i`` with probability proportional to
    ``weights[i]``, the same for the same ``(seed, epoch)``."""

    def __init__(self, weights: Sequence[float], num_samples: int, seed: int = 0):
        super().__init__(weights, num_samples, replacement=True)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
        self.generator = torch.Generator().manual_seed(int(state))
        return super().__iter__()


def example_weights(group_sizes: Sequence[int], group_weights: Sequence[float]) -> list[float] | None:
    """The weight of each example of consecutive groups (``group_sizes[g]`` examples of weight
    ``group_weights[g]``), or ``None`` when all weights are equal (a plain shuffle draws the same way)."""
    if len(set(group_weights)) <= 1:
        return None
    return [weight for size, weight in zip(group_sizes, group_weights, strict=True) for _ in range(size)]


def group_shares(group_sizes: Sequence[int], group_weights: Sequence[float]) -> list[float]:
    """The expected share of the draws that falls to each group."""
    mass = [size * weight for size, weight in zip(group_sizes, group_weights, strict=True)]
    return [m / sum(mass) for m in mass]
