"""Sample grids and loss curves written during training (PNG, main process only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def to_uint8_images(x: Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_image_grid(x: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Tile images in [-1, 1] into one PNG (1- and 3-channel; other channel counts show the first 3)."""
    from PIL import Image

    images = to_uint8_images(x[:, :3] if x.shape[1] >= 3 else x[:, :1])
    b, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = np.zeros((ncol * (h + 2) + 2, nrow * (w + 2) + 2, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = img
    mode = "L" if c == 1 else "RGB"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(grid[..., 0] if c == 1 else grid, mode=mode)
     .resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path))
    return path


def save_scatter(x: Tensor, path: str | Path, reference: Tensor | None = None, title: str = "") -> Path:
    """2-D samples as a scatter plot (toy task), optionally over reference data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    if reference is not None:
        ref = reference.detach().cpu().reshape(len(reference), -1)
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="lightgray", label="data")
    pts = x.detach().cpu().reshape(len(x), -1)
    ax.scatter(pts[:, 0], pts[:, 1], s=3, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def save_samples(x: Tensor, path: str | Path, title: str = "") -> Path:
    """Images as a grid; flat 2-D points as a scatter plot."""
    if x.ndim == 4:
        return save_image_grid(x, path)
    return save_scatter(x, path, title=title)


def plot_loss_curves(metrics_file: str | Path, out_path: str | Path) -> Path | None:
    """One line per logged loss from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    keys = sorted({k for r in rows for k in r if k.endswith("loss")})
    if not rows or not keys:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log" if all(p > 0 for k in keys for r in rows if k in r for p in [r[k]]) else "linear")
    ax.legend()
    fig.savefig(out_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(out_path)
