"""A small trainable denoiser for the toy task, initialised to equal the analytic teacher.

Distillation students start as a copy of their teacher; here the copy is the exact
posterior mean plus an MLP correction whose last layer starts at zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..diffusion import convert_prediction
from ..models.base import Cond, Denoiser
from .gmm import GaussianMixtureDenoiser


class ToyStudent(Denoiser):
    """prediction = teacher's prediction(x_t, t) + MLP(x_t, time features, class embedding), in `prediction_type`
    units ("sample": x0). Time features: sinusoids of the log-SNR, or ("angle") smooth sinusoids of the angle
    atan(sigma / alpha), which suit continuous-time consistency (sCM differentiates the student in t)."""

    def __init__(self, teacher: GaussianMixtureDenoiser, hidden: int = 128, depth: int = 3, num_freqs: int = 8,
                 prediction_type: str = "sample", time_features: str = "log_snr"):
        super().__init__(teacher.path, prediction_type)
        if time_features not in ("log_snr", "angle"):
            raise ValueError(f"time_features must be 'log_snr' or 'angle', got {time_features!r}")
        self.time_features = time_features
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
        # differentiable in x_t (SiD backpropagates through the scores' inputs)
        base = convert_prediction(self.teacher(x_t, t, cond), "sample", self.prediction_type, x_t, t, self.path)
        a, s = self.path.alpha(t).to(x_t.dtype), self.path.sigma(t).to(x_t.dtype)
        if self.time_features == "angle":
            time = torch.atan2(s, a).reshape(-1, 1)
            angles = time * torch.arange(1, len(self.freqs) + 1, dtype=x_t.dtype, device=x_t.device)
        else:
            time = self.path.log_snr(t).to(x_t.dtype).clamp(-20, 20).reshape(-1, 1) / 10
            angles = time * 10 * self.freqs.to(x_t.dtype)
        # EDM's c_in: unit-variance network input at every noise level
        c_in = (a * a * self.data_std ** 2 + s * s).rsqrt().reshape(-1, 1)
        h = torch.cat([x_t.reshape(x_t.shape[0], -1) * c_in, angles.sin(), angles.cos(), time], dim=1)
        h = self.trunk[0](h)
        if self.class_embed is not None and cond is not None:
            h = h + self.class_embed(cond["class_labels"])
        h = self.trunk[1:](h)
        return base + self.head(h).reshape(x_t.shape)

    def null_cond(self, cond: Cond) -> Cond:
        return self.teacher.null_cond(cond)
