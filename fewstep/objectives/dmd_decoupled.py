"""Decoupled DMD (Liu et al. 2025, "CFG Augmentation as the Spear, Distribution Matching as the Shield").

With a CFG real score x0_cfg = x0_u + w (x0_c - x0_u), DMD's update splits exactly (paper §3):

    fake - cfg = (x0_c - x0_cfg) + (fake - x0_c)
               =  CA: CFG augmentation, -(w - 1)(x0_c - x0_u)  +  DM: distribution matching, cond real vs fake

Each term gets its own weight and its own noise-level range; with unit weights and a shared range both are
evaluated at the same x_t and their sum is DMD's update. The paper's decoupled schedule (§4, Algorithm 1:
tau_CA ~ U(t, 1), tau_DM ~ U(0, 1), its time running from noise to data) is ca_below_generator_time: CA re-noises
each sample only to levels cleaner than its generator input (redundant above it, the paper finds), DM over the
full range.
Both are normalised by DMD's weight 1 / mean|x - x0_cfg| at their own x_t. The DM term can be
replaced (§5) by a GAN on the fake score's features, by a non-parametric regulariser (an RBF-kernel
MMD between the generator's batch and the real batch, Gretton et al. 2012 Eq. 3), or dropped.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import model_validator
from torch import Tensor

from ..diffusion import convert_prediction
from ..diffusion.timesteps import _trainable_range
from ..models.base import Cond, Denoiser, cat_conds
from . import gan
from .base import Batch, Objective
from .dmd import DistributionMatching, DMDConfig, check_time_range, make_fake_score, surrogate_loss
from .generator import interval_times
from .registry import register


def real_cond_and_cfg(teacher: Denoiser, x_t: Tensor, t: Tensor, cond: Cond | None,
                      guidance_scale: float) -> tuple[Tensor, Tensor]:
    """(x0_cond, x0_cfg) of the teacher from one fused cond/uncond forward."""
    if cond is None or guidance_scale == 1.0:
        x0 = teacher.predict(x_t, t, cond)
        return x0, x0
    xx, tt = torch.cat([x_t, x_t]), torch.cat([t, t])
    raw = teacher.call_network(xx, tt, cat_conds(cond, teacher.null_cond(cond)))
    x0_c, x0_u = convert_prediction(raw, teacher.prediction_type, "sample", xx, tt, teacher.path).chunk(2)
    return x0_c, x0_u + guidance_scale * (x0_c - x0_u)


def mmd_rbf_loss(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0)) -> Tensor:
    """Biased squared MMD between batches x and y, RBF kernels at multiples of the median distance of y."""
    x, y = x.float().flatten(1), y.float().flatten(1)
    with torch.no_grad():
        scale = torch.cdist(y, y).median().clamp_min(1e-8)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * (h * scale) ** 2)) for h in bandwidths)  # type: ignore[return-value]

    return kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()


def decoupled_gradients(x: Tensor, real_cond: Tensor, real_cfg: Tensor,
                        fake: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(CA, DM) updates at one x_t, each with DMD's weight 1 / mean|x - x0_cfg|."""
    x, real_cond, real_cfg = x.float(), real_cond.float(), real_cfg.float()
    weight = 1.0 / (x - real_cfg).abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    ca = (real_cond - real_cfg) * weight
    dm = None if fake is None else (fake.float() - real_cond) * weight
    return ca, dm


class DecoupledDMD(DistributionMatching):
    """CA (engine) + DM (regulariser) with separate weights and noise ranges; DM by DMD, GAN, MMD or none."""

    def __init__(self, student: Denoiser, teacher: Denoiser, fake_score, *, ca_weight: float = 1.0,
                 dm_weight: float = 1.0, ca_time_range: tuple[float, float] | None = None,
                 dm_time_range: tuple[float, float] | None = None,
                 dm_term: Literal["dmd", "gan", "mmd", "none"] = "dmd", ca_below_generator_time: bool = False,
                 **kwargs):
        super().__init__(student, teacher, fake_score, **kwargs)
        self.ca_weight, self.dm_weight, self.dm_term = ca_weight, dm_weight, dm_term
        self.ca_time_range = tuple(ca_time_range or self.time_range)
        self.dm_time_range = tuple(dm_time_range or self.time_range)
        self.ca_below_generator_time = ca_below_generator_time

    def ca_times(self, n: int, generator: torch.Generator, device: torch.device,
                 input_times: Tensor | None) -> Tensor:
        """CA's noise levels: ca_time_range, capped per sample at its generator input's level when
        ca_below_generator_time."""
        if not self.ca_below_generator_time:
            return self.noise_times(n, generator, device, self.ca_time_range)
        if input_times is None:
            raise ValueError("ca_below_generator_time needs the generator's input times "
                             "(matching_loss(..., input_times))")
        lo, hi = _trainable_range(self.teacher.path)
        top = ((input_times.double() - lo) / (hi - lo)).clamp(max=self.ca_time_range[1])  # as path fractions
        bottom = top.clamp(max=self.ca_time_range[0])
        return interval_times(lo + (hi - lo) * bottom, lo + (hi - lo) * top, n, generator, device,
                              shift=self.time_shift)

    def _terms_at(self, x: Tensor, cond: Cond | None, t: Tensor, with_fake: bool,
                  generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        x_t = self.teacher.path.add_noise(x.detach(), self.noise_like(x, generator), t)
        with torch.no_grad():
            real_cond, real_cfg = real_cond_and_cfg(self.teacher, x_t, t, cond, self.guidance_scale)
            fake = self.fake_score.predict(x_t, t, cond) if with_fake else None  # type: ignore[union-attr]
            return decoupled_gradients(x, real_cond, real_cfg, fake)

    def matching_loss(self, x: Tensor, batch: Batch, generator: torch.Generator,
                      input_times: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        dmd_dm = self.dm_term == "dmd"
        shared = dmd_dm and self.dm_time_range == self.ca_time_range and not self.ca_below_generator_time
        ca, dm = self._terms_at(x, batch.cond, self.ca_times(len(x), generator, x.device, input_times), shared,
                                generator)
        if dmd_dm and dm is None:  # separate schedule: the DM term at its own noise level
            dm_t = self.noise_times(len(x), generator, x.device, self.dm_time_range)
            _, dm = self._terms_at(x, batch.cond, dm_t, True, generator)
        grad = self.ca_weight * ca + (self.dm_weight * dm if dm is not None else 0.0)
        loss = surrogate_loss(x, grad)
        logs = {"dmd_loss": loss.detach(), "ca/grad_abs": ca.abs().mean()}
        if dm is not None:
            logs["dm/grad_abs"] = dm.abs().mean()
        if self.dm_term == "mmd":
            mmd = mmd_rbf_loss(x, batch.x0)
            loss = loss + self.dm_weight * mmd
            logs["dm/mmd"] = mmd.detach()
        elif self.dm_term == "gan":
            t = self.noise_times(len(x), generator, x.device, self.dm_time_range)
            noisy = self.teacher.path.add_noise(x, self.noise_like(x, generator), t)
            _, logits = self.fake_score.forward_with_logits(noisy, t, batch.cond, wrapped=False)  # type: ignore[union-attr]
            g_loss = gan.generator_loss(logits)
            loss = loss + self.dm_weight * g_loss
            logs.update({"gan/g_loss": g_loss.detach(), **gan.logit_logs("gan/g", None, logits)})
        return loss, logs


# ---- configuration and registration ----
class DecoupledDMDConfig(DMDConfig):
    name: Literal["decoupled_dmd"] = "decoupled_dmd"  # type: ignore[assignment]
    guidance_scale: float = 4.0
    ca_weight: float = 1.0
    dm_weight: float = 1.0
    ca_time_range: tuple[float, float] | None = None  # None: time_range
    dm_time_range: tuple[float, float] | None = None
    dm_term: Literal["dmd", "gan", "mmd", "none"] = "dmd"
    # the paper's CA schedule: each sample's CA noise level at most its generator input's (tau_CA ~ U(t, 1))
    ca_below_generator_time: bool = False

    @model_validator(mode="after")
    def _checks(self) -> "DecoupledDMDConfig":
        for name in ("ca_time_range", "dm_time_range"):
            if getattr(self, name) is not None:
                check_time_range(getattr(self, name), name)
        if self.gan.time_range is not None:
            raise ValueError("gan.time_range: decoupled DMD's GAN term draws its noise levels from dm_time_range; "
                             "set that")
        if self.dm_term == "gan" and not self.gan.discriminator_weight:
            raise ValueError("dm_term=gan needs gan.discriminator_weight > 0 "
                             "(its weight in the generator is dm_weight)")
        if self.dm_term != "gan" and self.gan.generator_weight:
            raise ValueError("gan.generator_weight is only for dm_term=gan here (weighted by dm_weight)")
        return self


def _build_decoupled(cfg: DecoupledDMDConfig, student: Denoiser, teacher: Denoiser) -> Objective:
    needs_fake = cfg.dm_term in ("dmd", "gan")
    fake = make_fake_score(cfg, student, teacher) if needs_fake else None
    return DecoupledDMD(
        student, teacher, fake, ca_weight=cfg.ca_weight, dm_weight=cfg.dm_weight, ca_time_range=cfg.ca_time_range,
        dm_time_range=cfg.dm_time_range, dm_term=cfg.dm_term, ca_below_generator_time=cfg.ca_below_generator_time,
        student_times=cfg.student_times,
        guidance_scale=cfg.guidance_scale, time_range=cfg.time_range, time_shift=cfg.time_shift,
        fake_score_updates=cfg.fake_score_updates, backward_simulation=cfg.backward_simulation,
        gan_discriminator_weight=cfg.gan.discriminator_weight, regression_pairs=cfg.regression_pairs,
        regression_weight=cfg.regression_weight, regression_batch_size=cfg.regression_batch_size)


register("decoupled_dmd", DecoupledDMDConfig, _build_decoupled)
