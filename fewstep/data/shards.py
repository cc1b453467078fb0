"""webdataset tar shards (LAION style: key.jpg|png|webp + key.txt and/or key.json), resumable.

The `webdataset` package opens shards (local paths, brace patterns, pipe:/http URLs) and groups
tar members into samples. Its autodecoder is NOT used: it would unpickle .pkl/.pth members.

Determinism: the stream is cut into units, one per (rank, DataLoader worker). In pass p, unit u
reads the shards at positions u, u + U, u + 2U, ... of a seeded shuffle of all shards, filters,
and shuffles samples with a buffer seeded by (seed, p, u). A unit's position is (pass, samples
taken), so resuming re-reads only the current pass up to that point and decodes no skipped image.
Units differ in their pass boundaries, so each rank's state differs: save one per rank.
"""

from __future__ import annotations

import json
import random
import warnings
from itertools import count
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from .config import DataConfig
from .errors import EmptyDatasetError, RejectionTally, UnreadableImageError
from .images import image_sample, open_image

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
# A filter gets the sample's parsed json (or {}) and returns a rejection reason, or None to keep it.
# Exceptions it raises propagate: swallowing them is how the LCM script rejected every sample.
SampleFilter = Callable[[dict[str, Any]], str | None]


def expand_shards(pattern: str) -> list[str]:
    """Shard URLs from a brace pattern ("d/{000..099}.tar"), "a.tar::b.tar", or a folder of .tar files."""
    if Path(pattern).is_dir():
        urls = sorted(str(p) for p in Path(pattern).glob("*.tar"))
    else:
        urls = wds.shardlists.expand_urls(pattern)
    local_missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if not urls or local_missing:
        raise EmptyDatasetError(f"no webdataset shards at {pattern!r} (missing: {local_missing[:3]}); expected .tar "
                                "files such as 'shards/{00000..00099}.tar' holding 0001.jpg + 0001.txt/.json")
    return urls


def metadata_filters(cfg: DataConfig) -> list[SampleFilter]:
    """The config's json filters. A missing field is a counted rejection, never a silent one."""
    filters: list[SampleFilter] = []
    if cfg.max_pwatermark is not None:
        limit = cfg.max_pwatermark

        def watermark(meta: dict[str, Any]) -> str | None:
            if meta.get("pwatermark") is None:
                return "json has no 'pwatermark' (max_pwatermark filter)"
            return f"pwatermark > {limit}" if meta["pwatermark"] > limit else None
        filters.append(watermark)
    if cfg.min_original_size is not None:
        smallest = cfg.min_original_size

        def size(meta: dict[str, Any]) -> str | None:
            w, h = meta.get("original_width", meta.get("width")), meta.get("original_height", meta.get("height"))
            if w is None or h is None:
                return "json has no 'original_width'/'width' or height (min_original_size filter)"
            return f"original size below {smallest}" if min(w, h) < smallest else None
        filters.append(size)
    return filters


class ShardStream(IterableDataset):
    """Yields collated batches, each tagged with the unit position reached after it."""

    def __init__(self, cfg: DataConfig, urls: list[str], rank: int, world_size: int, seed: int,
                 filters: list[SampleFilter]):
        self.cfg, self.urls, self.rank, self.world_size, self.seed = cfg, urls, rank, world_size, seed
        self.filters = filters
        self.workers = max(1, cfg.num_workers)
        self.starts = [(0, 0)] * self.workers  # per logical worker: (pass, samples taken in it)
        self.worker_offset = 0  # physical worker i plays logical worker (i + offset) % workers

    def _parse(self, raw: dict[str, Any], tally: RejectionTally) -> dict[str, Any] | None:
        """Cheap metadata stage (no image decode): caption, json filters; None when rejected."""
        ext = next((e for e in IMAGE_MEMBERS if e in raw), None)
        if ext is None:
            return tally.reject(f"no image member ({'/'.join(IMAGE_MEMBERS)})")
        try:
            meta = json.loads(raw["json"]) if "json" in raw else {}
        except ValueError:
            return tally.reject("invalid .json member")
        column = self.cfg.caption_column
        if column is not None:
            caption = meta.get(column)
        else:
            caption = raw["txt"].decode("utf-8") if "txt" in raw else meta.get("caption", meta.get("text"))
        caption = str(caption).strip() if caption is not None else ""
        if not caption and self.cfg.require_captions:
            where = f"json {column!r}" if column else ".txt, or json 'caption'/'text'"
            return tally.reject(f"no caption ({where}; or set require_captions: false)")
        for keep in self.filters:
            reason = keep(meta)
            if reason is not None:
                return tally.reject(reason)
        tally.accept()
        return {"key": raw["__key__"], "url": raw["__url__"], "image": raw[ext], "ext": ext, "prompt": caption}

    def unit_samples(self, unit: int, units: int, start: tuple[int, int]) -> Iterator[tuple[dict | None, int, int]]:
        """(decoded sample or None for a skipped bad image, pass, position) from `start` on, forever."""
        size = (self.cfg.resolution, self.cfg.resolution)
        for pass_index in count(start[0]):
            shards = list(self.urls)
            if self.cfg.shuffle:
                random.Random(f"{self.seed}-shards-{pass_index}").shuffle(shards)
            tally = RejectionTally(f"webdataset {self.cfg.path} (rank {self.rank}, unit {unit}, pass {pass_index})",
                                   self.cfg.reject_check_window)
            raw = wds.tariterators.tarfile_samples([{"url": u} for u in shards[unit::units]])
            kept = (s for s in (self._parse(r, tally) for r in raw) if s is not None)
            rng = random.Random(f"{self.seed}-samples-{pass_index}-{unit}")
            buffer = self.cfg.shuffle_buffer if self.cfg.shuffle else 1
            buffered = wds.shuffle(buffer, buffer, rng=rng)(kept)
            for position, sample in enumerate(buffered, start=1):
                if pass_index == start[0] and position <= start[1]:
                    continue
                yield self._decode(sample, size), pass_index, position
            tally.check_pass_end()

    def _decode(self, sample: dict[str, Any], size: tuple[int, int]) -> dict[str, Any] | None:
        name = f"{sample['key']}.{sample['ext']} in {sample['url']}"
        try:
            image = open_image(sample["image"], name, self.cfg.channels)
        except UnreadableImageError as err:
            if self.cfg.skip_bad_images:
                return None
            raise UnreadableImageError(f"{err} Or set data.skip_bad_images: true to skip such samples") from err
        return {**image_sample(image, size), "prompt": sample["prompt"], "key": sample["key"]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        logical = ((info.id if info else 0) + self.worker_offset) % self.workers
        units = self.world_size * self.workers
        batch: list[dict[str, Any]] = []
        for sample, pass_index, position in self.unit_samples(self.rank * self.workers + logical, units,
                                                              self.starts[logical]):
            if sample is not None:
                batch.append(sample)
            if len(batch) == self.cfg.batch_size:
                yield {**default_collate(batch), "__position__": (logical, pass_index, position)}
                batch = []


class WebDatasetLoader:
    """Endless batches from shards for one rank; state_dict()/load_state_dict() as in loader.py."""

    def __init__(self, cfg: DataConfig, rank: int, world_size: int, seed: int,
                 extra_filters: list[SampleFilter] | None = None):
        urls = expand_shards(cfg.path)
        units = world_size * max(1, cfg.num_workers)
        if len(urls) < units:
            raise EmptyDatasetError(f"webdataset {cfg.path}: {len(urls)} shards cannot feed {world_size} ranks x "
                                    f"{max(1, cfg.num_workers)} workers; "
                                    "lower data.num_workers or split into more shards")
        self.cfg, self.rank, self.world_size, self.seed = cfg, rank, world_size, seed
        self.stream = ShardStream(cfg, urls, rank, world_size, seed, metadata_filters(cfg) + (extra_filters or []))
        self.batches = 0
        self._generation = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        generation = self._generation
        self.stream.worker_offset = self.batches % self.stream.workers
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.cfg.num_workers)
        for batch in loader:
            if generation != self._generation:
                raise RuntimeError("load_state_dict was called while iterating; call iter(loader) again")
            logical, pass_index, position = batch.pop("__position__")
            starts = list(self.stream.starts)
            starts[logical] = (int(pass_index), int(position))
            self.stream.starts, self.batches = starts, self.batches + 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": min(p for p, _ in self.stream.starts), "samples_consumed": self.batches * self.cfg.batch_size,
                "batches": self.batches, "units": [list(s) for s in self.stream.starts], "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "num_workers": self.cfg.num_workers,
                "batch_size": self.cfg.batch_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            warnings.warn(f"webdataset {self.cfg.path}: no data position recorded; starting from the beginning")
            return
        mine = {"seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "num_workers": self.cfg.num_workers, "batch_size": self.cfg.batch_size}
        wrong = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if wrong:
            raise ValueError(f"webdataset position does not fit this run (saved, now): {wrong}; resume with the same "
                             "seed, world size, data.num_workers and data.batch_size, loading each rank's own state")
        self.stream.starts = [(int(p), int(n)) for p, n in state["units"]]
        self.batches = int(state["batches"])
        self._generation += 1
