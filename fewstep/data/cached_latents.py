"""Read a latent cache written by `cache_dataset`, verifying it against its index first.

Why verify: a cache copied while being written, or shards from two runs mixed in one folder,
train silently on wrong conditioning; the index's per-shard size and sha256 catch both.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch.utils.data import Dataset

from .errors import CacheIntegrityError, EmptyDatasetError
from .latent_cache import CACHE_FORMAT, CACHE_VERSION, INDEX_FILE, _sha256

FIX = "re-create it with `fewstep cache` (or cache_dataset)"


class CachedLatentDataset(Dataset):
    """Samples: "latents" plus every cached tensor (text embeddings, labels, sizes) and "prompt" if stored."""

    def __init__(self, out_dir: str | Path, verify: bool = True):
        self.root = Path(out_dir)
        index_path = self.root / INDEX_FILE
        if not index_path.is_file():
            raise EmptyDatasetError(f"no latent cache at {self.root} (missing {INDEX_FILE}); {FIX}")
        self.index = json.loads(index_path.read_text())
        if self.index.get("format") != CACHE_FORMAT or self.index.get("version") != CACHE_VERSION:
            raise CacheIntegrityError(f"{index_path} is not a {CACHE_FORMAT} v{CACHE_VERSION} index; {FIX}")
        self.shards = self.index["shards"]
        for shard in self.shards:
            self._check(shard, verify)
        counts = [s["num_samples"] for s in self.shards]
        if sum(counts) != self.index["num_samples"] or not counts:
            raise CacheIntegrityError(f"{index_path}: shard counts {counts} do not add up to "
                                      f"num_samples {self.index['num_samples']}; {FIX}")
        self.starts = [sum(counts[:i]) for i in range(len(counts))]
        self.prompts = self._read_prompts()
        self.class_names = self.index["config"].get("class_names")
        shapes = sorted({tuple(s["latent_shape"]) for s in self.shards})
        self.bucket_sizes = shapes
        self.bucket_ids = None if len(shapes) == 1 else [
            shapes.index(tuple(s["latent_shape"])) for s in self.shards for _ in range(s["num_samples"])]
        self._handles: dict[str, Any] = {}

    def _check(self, shard: dict[str, Any], verify: bool) -> None:
        path = self.root / shard["file"]
        if not path.is_file():
            raise CacheIntegrityError(f"latent cache {self.root}: shard {shard['file']} is missing; {FIX}")
        if path.stat().st_size != shard["bytes"] or (verify and _sha256(path) != shard["sha256"]):
            raise CacheIntegrityError(f"latent cache {self.root}: {shard['file']} does not match its size/sha256 in "
                                      f"{INDEX_FILE} (truncated or replaced); {FIX}")

    def _read_prompts(self) -> list[str] | None:
        prompts: list[str] = []
        for shard in self.shards:
            with safe_open(str(self.root / shard["file"]), framework="pt") as handle:
                stored = (handle.metadata() or {}).get("prompts")
            if stored is None:
                return None
            prompts += json.loads(stored)
        return prompts

    def __len__(self) -> int:
        return self.index["num_samples"]

    def __getstate__(self) -> dict[str, Any]:  # open handles stay in their process (DataLoader workers)
        return {**self.__dict__, "_handles": {}}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard_no = bisect.bisect_right(self.starts, index) - 1
        row = index - self.starts[shard_no]
        name = self.shards[shard_no]["file"]
        if name not in self._handles:
            self._handles[name] = safe_open(str(self.root / name), framework="pt")
        handle = self._handles[name]
        sample: dict[str, Any] = {key: handle.get_slice(key)[row:row + 1][0] for key in handle.keys()}
        if self.prompts is not None:
            sample["prompt"] = self.prompts[index]
        return sample
