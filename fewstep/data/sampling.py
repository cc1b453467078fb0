"""Seeded, rank-sharded batch plans that can start at any recorded position.

Hand-written instead of torch's DistributedSampler because that one can only start at the
beginning of an epoch; exact resume needs "epoch e, k samples already consumed". A plan is a pure
function of (seed, epoch, position, rank, world_size): no hidden RNG state, so restoring two
integers restores the data order.

Position convention: `consumed` counts samples of the epoch taken by ALL ranks together
(one step = batch_size x world_size), so every rank records the same position.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's sample order; identical on every rank (all ranks seed it the same way)."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed % 2**63, epoch]).permutation(num_samples)


class BatchPlan(Protocol):
    """What the resumable loader needs from a sampler."""

    batch_size: int
    world_size: int

    def batches(self, epoch: int, consumed: int) -> Iterator[list[int]]:
        """This rank's batches from the position on; ends at the end of the epoch (or never)."""

    def advance(self, epoch: int, consumed: int) -> tuple[int, int]:
        """The position after one more step."""

    def batches_per_epoch(self) -> int | None:
        """Steps per epoch, or None for an endless stream."""


class EpochBatchPlan:
    """Per epoch: one seeded permutation; step s gives rank r a contiguous block of it.

    The tail that does not fill a whole step (batch_size x world_size) is dropped so every rank
    takes the same number of steps (no hang in collective ops) and no sample is repeated.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int,
                 shuffle: bool = True):
        self.num_samples, self.batch_size, self.rank = num_samples, batch_size, rank
        self.world_size, self.seed, self.shuffle = world_size, seed, shuffle

    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def batches(self, epoch: int, consumed: int) -> Iterator[list[int]]:
        order = epoch_permutation(self.num_samples, self.seed, epoch, self.shuffle)
        step = self.batch_size * self.world_size
        start = consumed + self.rank * self.batch_size
        while consumed + step <= self.num_samples:
            yield order[start:start + self.batch_size].tolist()
            consumed, start = consumed + step, start + step

    def advance(self, epoch: int, consumed: int) -> tuple[int, int]:
        return epoch, consumed + self.batch_size * self.world_size


class StreamBatchPlan:
    """An endless stream: epochs of seeded permutations laid end to end (prompt sampling).

    Global position g is sample order_{g // n}[g % n]; a step gives rank r positions
    [g + r*b, g + (r+1)*b). Works even when there are fewer items than one global batch.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int,
                 shuffle: bool = True):
        self.num_samples, self.batch_size, self.rank = num_samples, batch_size, rank
        self.world_size, self.seed, self.shuffle = world_size, seed, shuffle

    def batches_per_epoch(self) -> None:
        return None

    def batches(self, epoch: int, consumed: int) -> Iterator[list[int]]:
        n = self.num_samples
        position = epoch * n + consumed + self.rank * self.batch_size
        cached: dict[int, np.ndarray] = {}
        while True:
            batch = []
            for g in range(position, position + self.batch_size):
                e = g // n
                if e not in cached:
                    if len(cached) > 2:  # positions only move forward; keep memory bounded
                        cached.clear()
                    cached[e] = epoch_permutation(n, self.seed, e, self.shuffle)
                batch.append(int(cached[e][g % n]))
            yield batch
            position += self.batch_size * self.world_size

    def advance(self, epoch: int, consumed: int) -> tuple[int, int]:
        return divmod(epoch * self.num_samples + consumed + self.batch_size * self.world_size, self.num_samples)
