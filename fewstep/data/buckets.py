"""Aspect-ratio buckets (SDXL / NovelAI style) and a batch plan that keeps each batch in one bucket.

Why: latent models train on many aspect ratios; square center crops cut heads and feet off
portraits. Each image goes to the bucket of nearest aspect ratio among (H, W) pairs of roughly
equal area, is resized to cover it and center-cropped; batches never mix buckets so they stack.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

from .sampling import epoch_permutation


def make_buckets(resolution: int, step: int = 64, max_aspect_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(H, W) pairs, multiples of `step`, area <= resolution**2, sorted from tall to wide.

    For resolution=1024, step=64: 1024x1024, 960x1088, 896x1152, ... 704x1408 and their mirrors,
    close to the list SDXL was trained on.
    """
    if resolution % step or resolution < step:
        raise ValueError(f"bucket resolution {resolution} must be a positive multiple of bucket_step {step}; "
                         f"e.g. resolution: {max(step, round(resolution / step) * step)}")
    area = resolution * resolution
    buckets = set()
    for width in range(step, area // step + 1, step):
        height = (area // width) // step * step
        if height < step:
            break
        if height <= width and width / height <= max_aspect_ratio:
            buckets.update({(height, width), (width, height)})  # mirrored: portrait and landscape alike
    # keep only the largest-area bucket per aspect ratio family: drop pairs dominated in both sides
    kept = [b for b in buckets if not any(o != b and o[0] >= b[0] and o[1] >= b[1] for o in buckets)]
    return sorted(kept, key=lambda hw: hw[0] / hw[1], reverse=True)


def nearest_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose log aspect ratio is closest to the image's (H, W)."""
    aspect = math.log(size[0] / size[1])
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - aspect))


class BucketBatchPlan:
    """Seeded same-bucket batches, sharded over ranks, resumable from (epoch, consumed).

    Per epoch: permute samples, split by bucket (keeping that order), cut into full batches
    (incomplete ones dropped), shuffle the batch order, trim to a multiple of world_size. Step s
    gives rank r global batch s*world_size + r. `consumed` counts samples over all ranks.
    """

    def __init__(self, bucket_ids: Sequence[int], batch_size: int, rank: int, world_size: int, seed: int,
                 shuffle: bool = True):
        self.bucket_ids = np.asarray(bucket_ids)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle

    def global_batches(self, epoch: int) -> list[list[int]]:
        order = epoch_permutation(len(self.bucket_ids), self.seed, epoch, self.shuffle)
        batches: list[list[int]] = []
        for bucket in np.unique(self.bucket_ids):
            members = order[self.bucket_ids[order] == bucket]
            full = len(members) // self.batch_size * self.batch_size
            batches += [members[i:i + self.batch_size].tolist() for i in range(0, full, self.batch_size)]
        if self.shuffle:
            rng = np.random.default_rng([self.seed % 2**63, epoch, 1])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches[:len(batches) // self.world_size * self.world_size]

    def batches_per_epoch(self) -> int:
        counts = np.bincount(self.bucket_ids) // self.batch_size
        return int(counts.sum()) // self.world_size

    def batches(self, epoch: int, consumed: int) -> Iterator[list[int]]:
        if consumed % self.batch_size:
            raise ValueError(f"bucketed data position {consumed} is not a multiple of batch_size {self.batch_size}: "
                             "resume with the batch_size the run was saved with")
        batches = self.global_batches(epoch)
        first = consumed // self.batch_size
        for index in range(first + self.rank, len(batches) - self.world_size + self.rank + 1, self.world_size):
            yield batches[index]

    def advance(self, epoch: int, consumed: int) -> tuple[int, int]:
        return epoch, consumed + self.batch_size * self.world_size
