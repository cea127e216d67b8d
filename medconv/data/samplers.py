"""Training order drawn from (seed, epoch) only, so a resumed run sees the batches an uninterrupted one would."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """Shuffled order, or class-balanced draws with replacement when `weights` are given.

    Lightning calls `set_epoch` before each epoch (as it does for DistributedSampler). Each yielded value
    encodes the sample index and the draw: `index + n * draw`, where draw = epoch * n + position; datasets
    decode it with `decode_draw` and seed their augmentation from it, so augmentations resume exactly too.
    """

    def __init__(self, n: int, seed: int = 0, weights: Sequence[float] | None = None):
        self.n = n
        self.seed = seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        base = self.epoch * self.n
        return iter(int(i) + self.n * (base + pos) for pos, i in enumerate(order.tolist()))


def decode_draw(value: int, n: int) -> tuple[int, int]:
    """(sample index, draw number); draw 0 for plain indices from evaluation loaders."""
    return value % n, value // n


def balanced_weights(label_indices: Sequence[int]) -> list[float]:
    """Per-sample weights so each class is drawn equally often."""
    counts: dict[int, int] = {}
    for y in label_indices:
        counts[y] = counts.get(y, 0) + 1
    return [1.0 / counts[y] for y in label_indices]
