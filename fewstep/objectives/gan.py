"""GAN pieces shared by the distribution-matching and adversarial families.

A discriminator here is a small classifier head on features that a denoiser records through
`Denoiser.feature_taps` (DMD2 §4.3: the head sits on the fake score's bottleneck; LADD reads
several taps of a frozen teacher). The losses are the non-saturating ones of Goodfellow et al.
2014 (§3), written with softplus: -log sigmoid(l) = softplus(-l).
"""

from __future__ import annotations

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
    """Features -> one logit per sample.

    Spatial features (B, C, H, W): conv 3x3, GroupNorm, SiLU, spatial mean, linear (works down to 1x1 grids).
    Flat features (B, C): a two-layer MLP.
    """

    def __init__(self, channels: int, spatial: bool = True):
        super().__init__()
        self.spatial = spatial
        if spatial:
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
            self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.SiLU())
        else:
            self.body = nn.Sequential(nn.Linear(channels, channels), nn.SiLU())
        self.out = nn.Linear(channels, 1)

    def forward(self, features: Tensor) -> Tensor:
        expected = 4 if self.spatial else 2
        if features.ndim != expected:
            raise ValueError(f"discriminator head expects {expected}-D features, got shape {tuple(features.shape)}")
        h = self.body(features.to(self.out.weight.dtype))
        if self.spatial:
            h = h.mean(dim=(2, 3))
        return self.out(h).squeeze(1)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-log D(real) - log(1 - D(fake)), mean over the batch (DMD2 §4.3)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss -log D(fake) (Goodfellow et al. 2014, §3; DMD2 §4.3)."""
    return F.softplus(-fake_logits).mean()


def logit_logs(prefix: str, real_logits: Tensor | None, fake_logits: Tensor) -> dict[str, Tensor]:
    logs = {f"{prefix}/logit_fake": fake_logits.detach().float().mean()}
    if real_logits is not None:
        logs[f"{prefix}/logit_real"] = real_logits.detach().float().mean()
        logs[f"{prefix}/accuracy"] = 0.5 * ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()).detach()
    return logs


__all__ = ["DiscriminatorHead", "default_tap", "discriminator_loss", "feature_channels", "generator_loss", "logit_logs"]
