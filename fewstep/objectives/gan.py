"""GAN pieces shared by the distribution-matching and adversarial families.

A discriminator here is a small classifier head on features that a denoiser records through
`Denoiser.feature_taps` (DMD2 §4.3: the head sits on the fake score's bottleneck; LADD reads
several taps of a frozen teacher). The losses are the non-saturating ones of Goodfellow et al.
2014 (§3), written with softplus: -log sigmoid(l) = softplus(-l).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def feature_channels(module: nn.Module) -> int:
    """Width of a tap's output: out_features / out_channels of the module's last Linear or Conv2d.

    Holds for the taps of every adapter family (UNet mid/down blocks end in a ResNet conv2,
    transformer blocks in a feed-forward projection) and for the toy MLP.
    """
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not last:
        raise ValueError(f"cannot infer the feature width of {type(module).__name__}; set gan_feature_channels")
    layer = last[-1]
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def default_tap(names: list[str]) -> str:
    """The bottleneck: a UNet's mid block, else the middle entry of the family's tap list."""
    if not names:
        raise ValueError("this denoiser exposes no feature taps (Denoiser.tap_modules); a GAN head needs one")
    return "mid" if "mid" in names else names[len(names) // 2]


class DiscriminatorHead(nn.Module):
    """Features -> logits.

    Spatial features (B, C, H, W): conv 3x3, GroupNorm, SiLU, then a linear read-out either at every position
    (per_position: (B, H*W) logits, as StyleGAN-T's token-wise heads that ADD and LADD use, so the hinge acts on
    each patch) or on the spatial mean ((B,) logits; DMD2 §4.3's classification branch). Flat features (B, C):
    a two-layer MLP, (B,) logits. spectral_norm: on the conv / hidden and read-out layers (StyleGAN-T's heads).
    Optional conditioning (LADD §3.2, heads "conditioned on the noise level and the text"): a noise-level
    embedding modulates the hidden features (FiLM: h (1 + scale) + shift), and a condition embedding adds the
    projection term <embed(c), h> (Miyato & Koyama 2018, Eq. 3). The mean of per-position logits equals the
    pooled head's logit: the read-out and the projection are linear in h.
    """

    def __init__(self, channels: int, spatial: bool = True, time_dim: int = 0, cond_dim: int = 0,
                 per_position: bool = False, spectral_norm: bool = False):
        super().__init__()
        self.spatial, self.per_position = spatial, per_position and spatial
        normed = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda layer: layer)
        if spatial:
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
            self.body = nn.Sequential(normed(nn.Conv2d(channels, channels, 3, padding=1)),
                                      nn.GroupNorm(groups, channels), nn.SiLU())
        else:
            self.body = nn.Sequential(normed(nn.Linear(channels, channels)), nn.SiLU())
        self.out = normed(nn.Linear(channels, 1))
        self.film = nn.Linear(time_dim, 2 * channels) if time_dim else None
        self.projection = nn.Linear(cond_dim, channels, bias=False) if cond_dim else None
        for layer in (self.film, self.projection):  # start as the unconditional head
            if layer is not None:
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor, time_embedding: Tensor | None = None,
                cond_embedding: Tensor | None = None) -> Tensor:
        expected = 4 if self.spatial else 2
        if features.ndim != expected:
            raise ValueError(f"discriminator head expects {expected}-D features, got shape {tuple(features.shape)}")
        h = self.body(features.to(self.out.bias.dtype))  # bias, not weight: a spectral-normed weight is recomputed
        if self.film is not None and time_embedding is not None:
            scale, shift = self.film(time_embedding.to(h)).chunk(2, dim=1)
            shape = (-1, h.shape[1]) + (1,) * (h.ndim - 2)
            h = h * (1 + scale.reshape(shape)) + shift.reshape(shape)
        if self.per_position:
            h = h.flatten(2).transpose(1, 2)  # (B, H*W, C)
        elif self.spatial:
            h = h.mean(dim=(2, 3))
        logits = self.out(h).squeeze(-1)
        if self.projection is not None and cond_embedding is not None:
            embedded = self.projection(cond_embedding.to(h))
            logits = logits + (embedded.reshape(len(h), *([1] * (h.ndim - 2)), -1) * h).sum(-1)
        return logits


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-log D(real) - log(1 - D(fake)), mean over the batch (DMD2 §4.3)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss_per_sample(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss -log D(fake) per sample (Goodfellow et al. 2014, §3; DMD2 §4.3)."""
    return F.softplus(-fake_logits)


def generator_loss(fake_logits: Tensor) -> Tensor:
    """generator_loss_per_sample, mean over the batch."""
    return generator_loss_per_sample(fake_logits).mean()


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """max(0, 1 - D(real)) + max(0, 1 + D(fake)), mean over the batch (Lim & Ye 2017; ADD §3.2, LADD)."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    """-D(fake), mean over the batch (the generator side of the hinge GAN)."""
    return -fake_logits.mean()


def sample_scores(logits: Tensor) -> Tensor:
    """One score per sample: the mean of its logits ((B,) as is; (B, positions) from per-position heads)."""
    return logits.reshape(len(logits), -1).mean(1)


def r1_penalty(real_logits: Tensor, real_inputs: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018, Eq. 9, without gamma / 2): ||grad_x D(x)||^2 per real sample, batch mean.
    Keeps the graph so the penalty trains the discriminator."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


def approximate_r1(real_logits: Tensor, perturbed_logits: Tensor, sigma: float) -> Tensor:
    """Approximated R1 (Lin et al. 2025, APT, Eq. 5) on the R1 scale: ||D(x) - D(x + sigma n)||^2 / sigma^2, batch
    mean; no double backward. For n ~ N(0, I) its expectation is ||grad_x D||^2 to first order in sigma, so one
    r1_weight means the same penalty exact or approximate (APT's lambda = r1_weight / (2 sigma^2))."""
    return (real_logits - perturbed_logits).pow(2).mean() / sigma**2


LOSSES = {"non_saturating": (discriminator_loss, generator_loss),
          "hinge": (hinge_discriminator_loss, hinge_generator_loss)}


def logit_logs(prefix: str, real_logits: Tensor | None, fake_logits: Tensor) -> dict[str, Tensor]:
    logs = {f"{prefix}/logit_fake": fake_logits.detach().float().mean()}
    if real_logits is not None:
        logs[f"{prefix}/logit_real"] = real_logits.detach().float().mean()
        logs[f"{prefix}/accuracy"] = discriminator_accuracy(real_logits, fake_logits)
    return logs


def discriminator_accuracy(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return 0.5 * ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()).detach()


class CollapseMonitor:
    """GAN stability guard. Flags (once) generator collapse, sample diversity below `diversity_ratio` x its
    first measured value, and discriminator domination, accuracy >= `max_accuracy` for `patience` consecutive
    discriminator updates (the generator then gets no useful gradient). `stop`: the flag is logged as inf,
    which the trainer's non-finite check turns into its stop path (last good checkpoint kept)."""

    def __init__(self, diversity_ratio: float = 0.1, max_accuracy: float = 0.99, patience: int = 100,
                 stop: bool = False):
        self.diversity_ratio, self.max_accuracy = diversity_ratio, max_accuracy
        self.patience, self.stop = patience, stop
        self.initial_diversity: float | None = None
        self.dominated_updates = 0
        self.reported: set[str] = set()

    def _flag(self, kind: str, message: str) -> dict[str, Tensor]:
        if kind not in self.reported:
            self.reported.add(kind)
            warnings.warn(f"GAN stability guard: {message}", RuntimeWarning, stacklevel=3)
        return {f"gan/{kind}": torch.tensor(math.inf if self.stop else 1.0)}

    def check_diversity(self, diversity: Tensor) -> dict[str, Tensor]:
        value = float(diversity)
        if self.initial_diversity is None:
            self.initial_diversity = value
        floor = self.diversity_ratio * self.initial_diversity
        if self.diversity_ratio > 0 and self.initial_diversity > 0 and value < floor:
            return self._flag("collapse", f"generator collapse: sample diversity {value:.4g} fell below "
                              f"{self.diversity_ratio} x its initial value {self.initial_diversity:.4g}. Lower the "
                              "adversarial weight or the generator lr, or raise the distillation weight")
        return {}

    def state(self) -> dict[str, Tensor]:
        """What a resumed run needs to judge collapse against the same initial diversity (NaN: not measured yet)."""
        initial = math.nan if self.initial_diversity is None else self.initial_diversity
        return {"initial_diversity": torch.tensor(initial, dtype=torch.float64),
                "dominated_updates": torch.tensor(self.dominated_updates)}

    def load_state(self, state: dict[str, Tensor]) -> None:
        initial = float(state["initial_diversity"])
        self.initial_diversity = None if math.isnan(initial) else initial
        self.dominated_updates = int(state["dominated_updates"])

    def check_accuracy(self, accuracy: Tensor) -> dict[str, Tensor]:
        self.dominated_updates = self.dominated_updates + 1 if float(accuracy) >= self.max_accuracy else 0
        if self.patience > 0 and self.dominated_updates >= self.patience:
            return self._flag("discriminator_wins", f"the discriminator separated real from generated samples "
                              f"(accuracy >= {self.max_accuracy}) for {self.dominated_updates} consecutive updates: "
                              "the generator's adversarial gradient has vanished. Lower the discriminator lr, "
                              "raise the R1 weight, or lower the adversarial weight")
        return {}


__all__ = ["CollapseMonitor", "DiscriminatorHead", "approximate_r1", "default_tap", "discriminator_loss",
           "feature_channels", "generator_loss", "hinge_discriminator_loss", "hinge_generator_loss", "logit_logs",
           "r1_penalty", "sample_scores"]
