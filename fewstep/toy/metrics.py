"""Sample-quality metrics against the known data distribution (exact up to Monte Carlo)."""

from __future__ import annotations

import torch
from torch import Tensor


def sliced_wasserstein(x: Tensor, y: Tensor, num_projections: int = 256, p: int = 1, seed: int = 0) -> float:
    """Sliced p-Wasserstein distance between two equal-size empirical samples.

    Each 1-D projection's W_p between equal-size samples is the mean |sorted(a) - sorted(b)|^p.
    """
    x = x.double().reshape(x.shape[0], -1)
    y = y.double().reshape(y.shape[0], -1)
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = (x @ dirs).sort(0)
    py, _ = (y @ dirs).sort(0)
    return float((px - py).abs().pow(p).mean(0).mean() ** (1.0 / p))


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)) -> float:
    """Unbiased squared MMD with a sum of RBF kernels (Gretton et al. 2012, Eq. 3)."""
    x = x.double().reshape(x.shape[0], -1)
    y = y.double().reshape(y.shape[0], -1)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def mode_coverage(x: Tensor, means: Tensor, stds: Tensor, radius: float = 3.0) -> tuple[float, float]:
    """(fraction of samples within `radius` std of some mode, fraction of modes hit by >= 1 sample)."""
    x = x.double().reshape(x.shape[0], -1)
    dist = torch.cdist(x, means.double()) / (stds.double().reshape(1, -1) * x.shape[1] ** 0.5)
    near = dist < radius
    return float(near.any(1).double().mean()), float(near.any(0).double().mean())
