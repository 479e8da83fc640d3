"""Data helpers shared by tasks: per-sample seeded randomness, a deterministic sampler."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, index): augmentation drawn from it is
    the same whether a run was interrupted or not, and whatever the worker or rank."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]))


class EpochSampler(Sampler[int]):
    """Shuffles ``n`` indices with a permutation fixed by (seed, epoch), shards them across
    ranks (rank r takes r, r+world, ...) and can start mid-epoch (``start`` = samples already
    consumed by this rank), which is how a resumed run continues where it stopped."""

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.n // self.world_size if self.drop_last else -(-self.n // self.world_size)
        if not self.drop_last:
            order += order[: per_rank * self.world_size - self.n]
        order = order[: per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return len(self._indices()) - self.start
