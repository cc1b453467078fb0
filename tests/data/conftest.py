"""Tiny on-disk datasets built in tmp_path: PNG folders, tar shards, prompt files."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from .image_helpers import random_pixels, write_png

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")




def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def caption_folder(tmp_path: Path) -> Callable[..., Path]:
    """n random 8x8 PNGs named img{i}.png with metadata.jsonl captions 'caption {i}'."""
    def make(n: int = 6, size: tuple[int, int] = (8, 8), style: str = "jsonl") -> Path:
        root = tmp_path / f"folder_{style}_{n}"
        rows = []
        for i in range(n):
            write_png(root / f"img{i}.png", random_pixels(*size, seed=i))
            rows.append({"file_name": f"img{i}.png", "text": f"caption {i}"})
            if style == "sidecar":
                (root / f"img{i}.txt").write_text(f"caption {i}\n")
        if style == "jsonl":
            (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        elif style == "csv":
            (root / "metadata.csv").write_text("file_name,text\n"
                                               + "".join(f"img{i}.png,caption {i}\n" for i in range(n)))
        return root
    return make


@pytest.fixture
def shard_folder(tmp_path: Path) -> Callable[..., Path]:
    """webdataset shards of 8x8 PNGs; key 's{shard}_{i}', caption in .txt or .json."""
    import webdataset as wds

    def make(shards: int = 4, per_shard: int = 5, json_meta: dict | None = None, caption_in: str = "txt",
             bad_image_key: str | None = None) -> Path:
        root = tmp_path / "shards"
        root.mkdir(exist_ok=True)
        for s in range(shards):
            with wds.TarWriter(str(root / f"{s:05d}.tar")) as sink:
                for i in range(per_shard):
                    key = f"s{s}_{i}"
                    sample = {"__key__": key, "png": png_bytes(random_pixels(8, 8, seed=100 * s + i))}
                    meta = dict(json_meta or {})
                    if caption_in == "txt":
                        sample["txt"] = f"caption {key}"
                    elif caption_in == "json":
                        meta["caption"] = f"caption {key}"
                    if meta:
                        sample["json"] = json.dumps(meta).encode()
                    if key == bad_image_key:
                        sample["png"] = b"not an image"
                    sink.write(sample)
        return root
    return make
