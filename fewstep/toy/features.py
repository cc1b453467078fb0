"""A frozen feature network for discriminators on the toy task (the analytic teacher has no network).

Random Fourier features (Rahimi & Recht 2007): sin(W x + b) with W ~ N(0, (k / data_std)^2) for a few
bandwidths k. Unlike a randomly initialised MLP, whose features are almost linear in x (and a linear
discriminator cannot tell a ring from its centre), these resolve both the ring's scale and its modes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .gmm import GaussianMixture


class RandomFourierFeatures(nn.Module):
    """x (B, ...) -> {"fourier": (B, num_features)}; frozen (buffers only)."""

    spatial = False

    def __init__(self, mixture: GaussianMixture, num_features: int = 256,
                 bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0), seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        data_std = float(mixture.sample(4096, torch.Generator().manual_seed(seed)).std())
        per_band = num_features // len(bandwidths)
        scales = torch.tensor([k / data_std for k in bandwidths]).repeat_interleave(per_band)
        self.register_buffer("weight", torch.randn(len(scales), mixture.dim, generator=g) * scales[:, None])
        self.register_buffer("bias", torch.rand(len(scales), generator=g) * 2 * math.pi)
        self.feature_channels = {"fourier": len(scales)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        flat = x.reshape(x.shape[0], -1).to(self.weight.dtype)
        return {"fourier": torch.sin(flat @ self.weight.T + self.bias)}
