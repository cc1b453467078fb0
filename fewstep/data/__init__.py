"""Data sources: captioned image folders, webdataset shards, prompt files, class folders, latent caches.

Start at `build_dataloader(cfg, rank, world_size, seed)`; layouts and resume rules are in README.md.
"""

from .config import DATA_KINDS, DataConfig
from .errors import (AllSamplesRejectedError, CacheIntegrityError, DataError, EmptyDatasetError,
                     MissingCaptionError, UnreadableImageError)
from .loader import build_dataloader, build_dataset

__all__ = ["DATA_KINDS", "AllSamplesRejectedError", "CacheIntegrityError", "DataConfig", "DataError",
           "EmptyDatasetError", "MissingCaptionError", "UnreadableImageError", "build_dataloader", "build_dataset"]
