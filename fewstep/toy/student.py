"""A small trainable denoiser for the toy task, initialised to equal the analytic teacher.

Distillation students start as a copy of their teacher; here the copy is the exact
posterior mean plus an MLP correction whose last layer starts at zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..models.base import Cond, Denoiser
from .gmm import GaussianMixtureDenoiser


class ToyStudent(Denoiser):
    """x0_hat = teacher_x0(x_t, t) + MLP(x_t, log-SNR embedding, class embedding)."""

    def __init__(self, teacher: GaussianMixtureDenoiser, hidden: int = 128, depth: int = 3, num_freqs: int = 8):
        super().__init__(teacher.path, "sample")
        self.teacher = teacher
        self.event_shape = teacher.mixture.event_shape
        dim = teacher.mixture.dim
        mix = teacher.mixture
        self.data_std = float((mix.means.pow(2).mean() + mix.stds.pow(2).mean() - mix.means.mean() ** 2).sqrt())
        self.register_buffer("freqs", 2.0 ** torch.arange(num_freqs) * math.pi / 16, persistent=False)
        num_classes = teacher.mixture.num_classes
        self.class_embed = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        layers: list[nn.Module] = [nn.Linear(dim + 2 * num_freqs + 1, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        with torch.no_grad():
            base = self.teacher(x_t, t, cond)
        log_snr = self.path.log_snr(t).to(x_t.dtype).clamp(-20, 20).reshape(-1, 1)
        angles = log_snr * self.freqs.to(x_t.dtype)
        # EDM's c_in: unit-variance network input at every noise level
        a, s = self.path.alpha(t).to(x_t.dtype), self.path.sigma(t).to(x_t.dtype)
        c_in = (a * a * self.data_std ** 2 + s * s).rsqrt().reshape(-1, 1)
        h = torch.cat([x_t.reshape(x_t.shape[0], -1) * c_in, angles.sin(), angles.cos(), log_snr / 10], dim=1)
        h = self.trunk[0](h)
        if self.class_embed is not None and cond is not None:
            h = h + self.class_embed(cond["class_labels"])
        h = self.trunk[1:](h)
        return base + self.head(h).reshape(x_t.shape)

    def null_cond(self, cond: Cond) -> Cond:
        return self.teacher.null_cond(cond)
