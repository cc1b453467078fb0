"""`build_dataloader`: one entry from a `data:` config section to an endless, resumable batch iterator.

Contract for the trainer (every kind):
- `iter(loader)` yields batches (dicts) forever; epochs roll over inside. Count steps, not epochs.
- `loader.state_dict()` is a small JSON-able dict: the position after the last batch handed out
  (not after what DataLoader workers prefetched). Save one per rank.
- `loader.load_state_dict(state)` before the next `iter(loader)`: with the same seed, rank and
  world size the next batches are exactly those that followed the saved position.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator, Mapping, Protocol

from torch.utils.data import DataLoader, Dataset, default_collate

from .config import DataConfig
from .errors import EmptyDatasetError
from .sampling import BatchPlan, EpochBatchPlan, StreamBatchPlan


class ResumableIterable(Protocol):
    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class ResumableLoader:
    """A map-style dataset + a BatchPlan, iterated through torch DataLoader, with a saveable position."""

    def __init__(self, dataset: Dataset, plan: BatchPlan, seed: int, source: str, num_workers: int = 0,
                 collate_fn: Callable[[list[Any]], Any] = default_collate):
        self.dataset, self.plan, self.seed, self.source = dataset, plan, seed, source
        self.num_workers, self.collate_fn = num_workers, collate_fn
        self.epoch, self.consumed = 0, 0
        self._generation = 0  # bumped by load_state_dict so a stale iterator cannot keep going

    def batches_per_epoch(self) -> int | None:
        return self.plan.batches_per_epoch()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.plan.batches_per_epoch() == 0:
            raise EmptyDatasetError(
                f"{self.source}: {len(self.dataset)} samples cannot fill one step of batch_size {self.plan.batch_size} "
                f"x {self.plan.world_size} ranks (per bucket, when bucketing); lower data.batch_size or add data")
        generation = self._generation
        while True:
            loader = DataLoader(self.dataset, batch_sampler=self.plan.batches(self.epoch, self.consumed),
                                num_workers=self.num_workers, collate_fn=self.collate_fn)
            for batch in loader:
                if generation != self._generation:
                    raise RuntimeError("load_state_dict was called while iterating; call iter(loader) again")
                self.epoch, self.consumed = self.plan.advance(self.epoch, self.consumed)
                yield batch
            self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "samples_consumed": self.consumed, "seed": self.seed,
                "batch_size": self.plan.batch_size, "world_size": self.plan.world_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            warnings.warn(f"{self.source}: no data position recorded; starting from the beginning")
            state = {"epoch": 0, "samples_consumed": 0, "seed": self.seed}
        if state["seed"] != self.seed:
            raise ValueError(f"data position was saved with seed {state['seed']} but this run uses seed "
                             f"{self.seed}; resume with the same run.seed")
        self.epoch, self.consumed = int(state["epoch"]), int(state["samples_consumed"])
        self._generation += 1


def build_dataset(cfg: DataConfig) -> Dataset:
    """The map-style dataset of a config (every kind except webdataset, which is a stream)."""
    from .class_folders import ClassFolderDataset
    from .imagefolder import CaptionedImageFolder
    from .cached_latents import CachedLatentDataset
    from .prompts import PromptDataset, read_prompts

    image_options = {"channels": cfg.channels, "buckets": cfg.buckets, "bucket_step": cfg.bucket_step,
                     "max_aspect_ratio": cfg.max_aspect_ratio}
    if cfg.kind == "imagefolder":
        return CaptionedImageFolder(cfg.path, cfg.resolution, cfg.caption_column, cfg.require_captions, **image_options)
    if cfg.kind == "class_folders":
        return ClassFolderDataset(cfg.path, cfg.resolution, **image_options)
    if cfg.kind == "prompts":
        return PromptDataset(read_prompts(cfg.path, cfg.caption_column))
    if cfg.kind == "latent_cache":
        return CachedLatentDataset(cfg.path, verify=cfg.verify_cache)
    raise ValueError(f"data kind {cfg.kind!r} is a stream, not a map-style dataset; use build_dataloader")


def build_dataloader(cfg: DataConfig | Mapping[str, Any], rank: int, world_size: int, seed: int) -> ResumableIterable:
    """The trainer's single entry: any data kind -> endless resumable batches for this rank."""
    from .buckets import BucketBatchPlan
    from .shards import WebDatasetLoader

    cfg = cfg if isinstance(cfg, DataConfig) else DataConfig.model_validate(cfg)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if cfg.kind == "webdataset":
        return WebDatasetLoader(cfg, rank, world_size, seed)
    dataset = build_dataset(cfg)
    args = (cfg.batch_size, rank, world_size, seed, cfg.shuffle)
    bucket_ids = getattr(dataset, "bucket_ids", None)
    if cfg.kind == "prompts":
        plan: BatchPlan = StreamBatchPlan(len(dataset), *args)
    elif bucket_ids is not None:
        plan = BucketBatchPlan(bucket_ids, *args)
    else:
        plan = EpochBatchPlan(len(dataset), *args)
    return ResumableLoader(dataset, plan, seed, f"data.path {cfg.path}", cfg.num_workers)
