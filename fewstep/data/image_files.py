"""Shared base of the folder datasets: a sorted list of image files, one target size each.

Square training uses (resolution, resolution) for every file; with buckets each file's header is
read once up front to pick its (H, W) bucket, which the BucketBatchPlan then groups by.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .buckets import make_buckets, nearest_bucket
from .images import image_sample, image_size, open_image


class ImageFileDataset(Dataset):
    """Map-style dataset over image files; subclasses add their conditioning to `extra(i)`."""

    def __init__(self, files: list[Path], resolution: int, channels: int = 3, buckets: bool = False,
                 bucket_step: int = 64, max_aspect_ratio: float = 2.0):
        self.files = files
        self.channels = channels
        if buckets:
            self.bucket_sizes = make_buckets(resolution, bucket_step, max_aspect_ratio)
            self.bucket_ids: list[int] | None = [nearest_bucket(image_size(f), self.bucket_sizes) for f in files]
        else:
            self.bucket_sizes, self.bucket_ids = [(resolution, resolution)], None

    def __len__(self) -> int:
        return len(self.files)

    def target_size(self, index: int) -> tuple[int, int]:
        return self.bucket_sizes[self.bucket_ids[index] if self.bucket_ids is not None else 0]

    def extra(self, index: int) -> dict[str, Any]:
        return {}

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        sample = image_sample(open_image(path, str(path), self.channels), self.target_size(index))
        sample.update(self.extra(index))
        return sample
