"""Plain helpers shared by the data tests (a module, not conftest: conftest names clash across folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def random_pixels(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path
