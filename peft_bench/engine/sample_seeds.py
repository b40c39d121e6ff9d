"""Training samples whose random draws are keyed on (seed, epoch, index), for DataLoader workers.

A persistent worker's generators are seeded once, when the loader's first iterator is made, and
then run on across epochs; which samples a worker draws for depends on the worker count. A run
resumed from an epoch checkpoint starts fresh workers, so its augmentations would differ from the
uninterrupted run's. Here each sample reseeds the worker's global generators (torch's, Python's
`random`, numpy's legacy one: what augmentations and user datasets draw from) from a hash of
(seed, epoch, index) before it is loaded, so a sample's augmentation does not depend on the
workers, the world size, the rank or an interruption.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed of the sample: a hash, so that nearby keys give unrelated streams."""
    digest = hashlib.blake2b(f"{seed},{epoch},{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def seed_generators(seed: int) -> None:
    """Seed the generators a sample's loading may draw from (torch's CPU generator alone: a worker does
    no accelerator work, and `torch.manual_seed` would queue a seeding of each accelerator, stack trace
    included, on every sample)."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # the legacy generator takes 32 bits


class EpochKeys(Sampler[tuple[int, int]]):
    """The wrapped sampler's indices, each with the epoch it is drawn in: the keys of `SeededSamples`."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededSamples(Dataset):
    """The wrapped dataset, read by (epoch, index): each sample loaded after seeding the generators
    from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed_generators(sample_seed(self.seed, epoch, index))
        return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)
