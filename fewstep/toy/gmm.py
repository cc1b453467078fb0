"""Analytic Gaussian-mixture teacher: the exact denoiser at every noise level.

Data: p(x0) = sum_k w_k N(mu_k, tau_k^2 I). On a path x_t = a x0 + s eps each component
stays Gaussian, x_t | k ~ N(a mu_k, (a^2 tau_k^2 + s^2) I), so the posterior mean E[x0 | x_t]
is closed form. Every objective is first shown to work against this teacher on CPU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import GaussianPath
from ..models.base import Cond, Denoiser


class GaussianMixture:
    """Isotropic Gaussian mixture over tensors of `event_shape`; components may carry a class."""

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor | None = None,
                 component_classes: Tensor | None = None, event_shape: tuple[int, ...] | None = None):
        self.means = means.double().reshape(means.shape[0], -1)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(self.means.shape[0]).clone()
        k = self.means.shape[0]
        self.weights = (torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None
                        else weights.double() / weights.sum())
        self.component_classes = component_classes
        self.event_shape = tuple(event_shape) if event_shape is not None else tuple(means.shape[1:])
        self.num_classes = 0 if component_classes is None else int(component_classes.max()) + 1

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _log_weights(self, class_labels: Tensor | None, batch: int) -> Tensor:
        logw = self.weights.log().expand(batch, -1)
        if class_labels is None or self.component_classes is None:
            return logw
        labels = class_labels.reshape(-1, 1).to(self.component_classes.device)
        unconditional = labels == self.num_classes  # the null class means "any component"
        member = (self.component_classes.reshape(1, -1) == labels) | unconditional
        return logw.masked_fill(~member, float("-inf"))

    def sample(self, n: int, generator: torch.Generator | None = None, class_labels: Tensor | None = None) -> Tensor:
        logw = self._log_weights(class_labels, n)
        comp = torch.multinomial(logw.softmax(-1), 1, generator=generator).squeeze(1)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[comp] + self.stds[comp, None] * noise
        return x.reshape(n, *self.event_shape).float()

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """E[x0 | x_t] for x_t = alpha x0 + sigma eps (alpha, sigma per sample)."""
        x = x_t.double().reshape(x_t.shape[0], -1)
        a = alpha.double().reshape(-1, 1)
        s = sigma.double().reshape(-1, 1)
        var = a * a * self.stds.reshape(1, -1) ** 2 + s * s  # (B, K)
        diff = x[:, None, :] - a[:, :, None] * self.means[None]  # (B, K, D)
        log_lik = -0.5 * (diff.pow(2).sum(-1) / var + self.dim * torch.log(var))
        resp = (self._log_weights(class_labels, x.shape[0]) + log_lik).softmax(-1)  # (B, K)
        gain = a * self.stds.reshape(1, -1) ** 2 / var  # (B, K)
        comp_mean = self.means[None] + gain[:, :, None] * diff
        return (resp[:, :, None] * comp_mean).sum(1).reshape(x_t.shape).to(x_t.dtype)

    def log_prob(self, x0: Tensor) -> Tensor:
        x = x0.double().reshape(x0.shape[0], -1)
        var = self.stds ** 2
        d2 = (x[:, None, :] - self.means[None]).pow(2).sum(-1)
        comp = -0.5 * (d2 / var + self.dim * torch.log(2 * math.pi * var))
        return torch.logsumexp(self.weights.log() + comp, dim=-1)


def ring_mixture(num_modes: int = 8, radius: float = 2.0, std: float = 0.08, num_classes: int = 0) -> GaussianMixture:
    """The classic 2-D ring of modes; with num_classes > 0 modes are assigned to classes round-robin."""
    angles = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    classes = torch.arange(num_modes) % num_classes if num_classes > 0 else None
    return GaussianMixture(means, torch.tensor(std), component_classes=classes)


def image_mixture(num_modes: int = 6, shape: tuple[int, int, int] = (1, 8, 8), std: float = 0.1, seed: int = 0,
                  num_classes: int = 0) -> GaussianMixture:
    """Image-shaped mixture: each mode is a smooth random pattern in [-1, 1] (for UNet/DiT-shaped tests)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_modes, shape[0], max(1, shape[1] // 4), max(1, shape[2] // 4), generator=g,
                        dtype=torch.float64)
    means = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False) * 1.6 - 0.8
    classes = torch.arange(num_modes) % num_classes if num_classes > 0 else None
    return GaussianMixture(means, torch.tensor(std), component_classes=classes, event_shape=shape)


class GaussianMixtureDenoiser(Denoiser):
    """The exact teacher: predicts E[x0 | x_t] (prediction_type 'sample') on any path."""

    def __init__(self, mixture: GaussianMixture, path: GaussianPath):
        super().__init__(path, "sample")
        self.mixture = mixture

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        labels = None if cond is None else cond.get("class_labels")
        return self.mixture.posterior_mean(x_t, self.path.alpha(t), self.path.sigma(t), labels)

    def null_cond(self, cond: Cond) -> Cond:
        return {"class_labels": torch.full_like(cond["class_labels"], self.mixture.num_classes)}
