"""A discriminator made of a frozen feature network and small trainable heads (ADD §3.2, LADD §3.2).

ADD reads a frozen image encoder (DINOv2 in the paper) on clean samples; LADD reads the frozen teacher's own
intermediate features on re-noised latents, several depths at once, with heads conditioned on the noise
level and the prompt. Both are one class here: a backbone (a Denoiser with feature taps: the teacher by
default, or any module the user provides), one DiscriminatorHead per tap, logits averaged over taps.
Only the heads are trained and checkpointed; the backbone never is.
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import Tensor, nn

from ..models.base import Cond, Denoiser, PreparedRouting
from ..diffusion import GaussianPath
from ..toy import GaussianMixtureDenoiser, RandomFourierFeatures
from .gan import DiscriminatorHead, feature_channels


def log_snr_embedding(log_snr: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of the log-SNR (path-agnostic noise level, clamped to [-20, 20]), frequencies spaced
    geometrically from pi down to pi / 1000 (periods 2 to 2000 log-SNR units): smooth in the noise level, with
    the lowest frequencies nearly linear over the whole range (as transformers' timestep embeddings)."""
    freqs = math.pi * torch.logspace(0, -3, dim // 2, device=log_snr.device, dtype=torch.float32)
    angles = log_snr.float().clamp(-20, 20).reshape(-1, 1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ConditionEmbedding(nn.Module):
    """Per-sample condition vector for projection heads: a class embedding (with the null row), or the
    teacher's text embeddings pooled over tokens (masked by encoder_attention_mask) and concatenated,
    then projected to `width`."""

    def __init__(self, width: int, num_classes: int | None = None, text_dims: dict[str, int] | None = None):
        super().__init__()
        self.text_dims = dict(text_dims or {})
        self.classes = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.text = nn.Linear(sum(self.text_dims.values()), width) if self.text_dims else None

    @classmethod
    def of(cls, teacher: Denoiser, width: int) -> "ConditionEmbedding | None":
        """Sized from the teacher: its class count, or the shapes of its stored empty-prompt embeddings."""
        if isinstance(teacher, GaussianMixtureDenoiser):
            num_classes = teacher.mixture.num_classes or None
        else:
            num_classes = getattr(teacher, "num_classes", None)
        text_dims = {key: getattr(teacher, f"null_{key}").shape[-1] for key in getattr(teacher, "_null_keys", [])
                     if key != "encoder_attention_mask"}
        return cls(width, num_classes, text_dims) if num_classes or text_dims else None

    def forward(self, cond: Cond | None) -> Tensor | None:
        if not cond:
            return None
        if self.classes is not None and "class_labels" in cond:
            return self.classes(cond["class_labels"])
        if self.text is None or not set(self.text_dims) <= set(cond):
            return None
        mask = cond.get("encoder_attention_mask")
        parts = []
        for key in self.text_dims:
            value = cond[key].float()
            if value.ndim == 3:  # (B, tokens, dim): mean over the real tokens
                weights = (mask.float() if mask is not None and mask.shape[:2] == value.shape[:2]
                           else torch.ones(value.shape[:2], device=value.device))
                value = (value * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
            parts.append(value)
        return self.text(torch.cat(parts, dim=1).to(self.text.weight.dtype))


def default_backbone(teacher: Denoiser) -> nn.Module:
    """The frozen teacher (its encoder / transformer blocks). The analytic toy teacher has no network:
    frozen random Fourier features of the sample stand in."""
    if isinstance(teacher, GaussianMixtureDenoiser):
        return RandomFourierFeatures(teacher.mixture)
    return teacher


def spread_taps(names: list[str], count: int) -> list[str]:
    """`count` taps evenly spread over the network's depth, the deepest included."""
    if not names:
        raise ValueError("the discriminator backbone exposes no feature taps (Denoiser.tap_modules)")
    if count >= len(names):
        return list(names)
    return [names[round((len(names) - 1) * (i + 1) / count)] for i in range(count)]


def load_backbone(spec: str) -> nn.Module:
    """A user backbone from 'package.module:factory'; factory() returns a module mapping a sample batch x to a
    dict of feature tensors and carrying `feature_channels: dict[str, int]` (e.g. a frozen DINOv2 on decoded
    pixels). Imported from the user's own code: nothing is downloaded or executed from the hub."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"discriminator backbone {spec!r}: expected 'teacher' or 'package.module:factory'")
    backbone = getattr(importlib.import_module(module_name), attr)()
    if not isinstance(getattr(backbone, "feature_channels", None), dict):
        raise TypeError(f"discriminator backbone {spec!r} must set feature_channels: dict[str, int] (tap -> width)")
    return backbone.requires_grad_(False).eval()


class FeatureDiscriminator(PreparedRouting, nn.Module):
    """logits(x, t, c) of head_k(features_k(x, t, c), embed(t), embed(c)) over taps k: every head's per-position
    logits side by side, (B, sum_k positions_k) (per_position, ADD / LADD's StyleGAN-T heads; the losses act on
    each), else their mean over taps, (B,).

    backbone: a Denoiser (features of backbone(x_t, t, c) at `taps`) or a plain module x -> {tap: features}
    (with `feature_channels`, and `spatial = False` for flat features). time_dim > 0 makes the heads noise-level
    aware (LADD); cond_embedding adds projection terms.
    """

    def __init__(self, backbone: nn.Module, path: GaussianPath, taps: list[str] | None = None, time_dim: int = 0,
                 cond_embedding: ConditionEmbedding | None = None, cond_dim: int = 0, per_position: bool = False,
                 spectral_norm: bool = False):
        super().__init__()
        self.__dict__["backbone"] = backbone  # frozen and not ours: kept out of state_dict / optimiser
        self.path = path
        self.is_denoiser = isinstance(backbone, Denoiser)
        spatial = getattr(backbone, "spatial", True)
        if self.is_denoiser:
            modules = backbone.tap_modules()
            self.taps = taps or spread_taps(list(modules), 3)
            unknown = [n for n in self.taps if n not in modules]
            if unknown:
                raise KeyError(f"unknown feature taps {unknown}; available: {sorted(modules)}")
            channels = {n: feature_channels(modules[n]) for n in self.taps}
        else:
            channels = dict(backbone.feature_channels)
            self.taps = taps or list(channels)
        self.time_dim = time_dim
        self.heads = nn.ModuleDict({
            name: DiscriminatorHead(channels[name], spatial, time_dim, cond_dim if cond_embedding else 0,
                                    per_position, spectral_norm)
            for name in self.taps})
        self.per_position = per_position and spatial
        self.cond_embedding = cond_embedding

    def call(self, x: Tensor, t: Tensor | None, cond: Cond | None, backbone_grad: bool = True) -> Tensor:
        """Through the accelerate-prepared wrapper (discriminator updates: DDP syncs the heads' gradients)."""
        return self.through_prepared(x, t, cond, backbone_grad)

    def features(self, x: Tensor, t: Tensor | None, cond: Cond | None) -> dict[str, Tensor]:
        backbone = self.backbone
        if not self.is_denoiser:
            out = backbone(x)
            return {name: out[name] for name in self.taps}
        with backbone.feature_taps(self.taps) as captured:
            backbone(x, t, cond)
        return captured

    def forward(self, x: Tensor, t: Tensor | None, cond: Cond | None = None, backbone_grad: bool = True) -> Tensor:
        """backbone_grad=False: features without a graph (discriminator updates need only the heads' one)."""
        with torch.set_grad_enabled(backbone_grad and torch.is_grad_enabled()):
            feats = self.features(x, t, cond)
        time_embedding = None
        if self.time_dim and t is not None:
            time_embedding = log_snr_embedding(self.path.log_snr(t), self.time_dim)
        cond_embedding = self.cond_embedding(cond) if self.cond_embedding is not None else None
        logits = torch.cat([self.heads[name](feats[name], time_embedding, cond_embedding).reshape(len(x), -1)
                            for name in self.taps], dim=1)
        return logits if self.per_position else logits.mean(1)
