"""How a run repeats itself: global seeds, per-sample augmentation seeds, and deterministic kernels.

A training sample's augmentation is drawn from its own generator, seeded by (seed, epoch, index). The draws
are then the same with any number of loader workers, on any torchrun rank, and after a resume, because they
depend on no process's RNG history. Global RNGs (dropout, mixup) live in the main process and are saved
in every checkpoint (pipeline.runs.checkpoint.rng_state).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: neighbouring inputs give unrelated 64-bit outputs (1.5 us; SeedSequence: 18 us)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample in one epoch."""
    return _mix(_mix(_mix(seed & MASK64) ^ epoch) ^ index) >> 1


class SeededSampler(Sampler):
    """Wraps an index sampler to yield (index, seed) keys; datasets seed their augmentation from the key."""

    def __init__(self, sampler: Sampler, seed: int):
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.sampler:
            yield i, sample_seed(self.seed, self.epoch, i)

    def __len__(self) -> int:
        return len(self.sampler)


@dataclass(frozen=True)
class DrawnRows:
    """A training dataset's rows from `start` on (pseudo-labelled test rows) are drawn afresh each epoch, `share` of
    them: their weight beside the labelled rows, in expectation, for any task and loss."""

    start: int
    share: float

    def epoch_length(self, n: int) -> int:
        """Rows per epoch for a dataset of n rows: every labelled row and the drawn share of the rest."""
        return self.start + round(self.share * (n - self.start))


class DrawSampler(Sampler):
    """Maps an inner sampler over the epoch's positions (DistributedSampler of DrawnRows.epoch_length) onto dataset
    rows: positions below `start` are the labelled rows; the rest take this epoch's seeded draw of the others."""

    def __init__(self, sampler: Sampler, drawn: DrawnRows, n: int, seed: int):
        self.sampler, self.drawn, self.n, self.seed, self.epoch = sampler, drawn, n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        start = self.drawn.start
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -2))
        chosen = (start + torch.randperm(self.n - start, generator=g)).tolist()
        for i in self.sampler:
            yield i if i < start else chosen[i - start]

    def __len__(self) -> int:
        return len(self.sampler)


class LengthGroupedSampler(Sampler):
    """Batches of similar lengths, still shuffled: the inner sampler's order (seeded per epoch) is cut into chunks
    of `mega` batches, each chunk sorted by length and cut into batches, and the full batches are shuffled (the
    one short batch goes last, where drop_last finds it). Padding then costs little: text batches from dynamic
    padding are as long as their longest item (the trick of Hugging Face's group_by_length)."""

    def __init__(self, sampler: Sampler, lengths, batch_size: int, seed: int, mega: int = 50):
        self.sampler, self.lengths, self.batch_size, self.seed, self.mega = sampler, lengths, batch_size, seed, mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        order, size = list(self.sampler), self.batch_size
        batches = []
        for start in range(0, len(order), size * self.mega):
            chunk = sorted(order[start:start + size * self.mega], key=lambda i: -self.lengths[i])
            batches += [chunk[j:j + size] for j in range(0, len(chunk), size)]
        short = [b for b in batches if len(b) < size]
        full = [b for b in batches if len(b) == size]
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        for b in [*(full[i] for i in torch.randperm(len(full), generator=g).tolist()), *short]:
            yield from b

    def __len__(self) -> int:
        return len(self.sampler)


class LengthSortedSampler(Sampler):
    """Inference in order of length, longest first, so each padded batch is as long as its items; `order` lets
    the loop put the outputs back in dataset order (pipeline.engine.loop.infer)."""

    def __init__(self, lengths):
        self.order = np.argsort(-np.asarray(lengths), kind="stable")

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


def unpack(key) -> tuple[int, int | None]:
    """(index, seed) from a SeededSampler key; a plain index (validation, prediction) has no seed."""
    return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), None)


class SampleRNG:
    """A numpy and a Python generator re-seeded in place for each sample: setting a PCG64 state takes 1.6 us,
    where a fresh np.random.default_rng(seed) takes 17 us, per sample, in every loader worker."""

    def __init__(self):
        self.bits = np.random.PCG64(0)
        self.numpy, self.python = np.random.Generator(self.bits), random.Random()

    def reseed(self, seed: int) -> None:
        self.bits.state = {"bit_generator": "PCG64", "state": {"state": seed, "inc": 0xDA3E39CB94B95BDB},
                           "has_uint32": 0, "uinteger": 0}
        self.python.seed(seed)


def seed_transform(transform, seed: int | None) -> None:
    """Point an albumentations Compose (and every transform in it) at generators seeded for this sample.

    Albumentations 2.x draws from its own generators, seeded from OS entropy unless told otherwise: global
    seeds do not reach them, which is what made two identical runs differ before this.
    """
    if seed is None:
        return
    rng = getattr(transform, "_sample_rng", None)
    if rng is None:  # first sample: hand the Compose our generators once; afterwards only re-seed them
        rng = transform._sample_rng = SampleRNG()
        transform.set_random_state(rng.numpy, rng.python)
    rng.reseed(seed)


def sample_generator(seed: int | None) -> torch.Generator | None:
    """A torch generator for one sample's draws; None (torch's global RNG) when the key carries no seed."""
    return None if seed is None else torch.Generator().manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """--deterministic: bitwise-repeatable kernels on CUDA (on CPU the default kernels already repeat).

    Costs speed on GPU: cuDNN keeps to deterministic convolution algorithms, cuBLAS to a fixed workspace, and
    ops with atomics-based backward passes (index_add, scatter_add, interpolation) take slower deterministic
    paths. A few ops have no deterministic CUDA version at all (the backward of AdaptiveAvgPool2d, which most
    timm CNNs pool with): they warn once, by name, instead of stopping the run (warn_only).
    """
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for repeatable GEMMs
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    log.info("deterministic algorithms on (train.deterministic)")
