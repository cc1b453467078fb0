"""Variational Score Distillation for one-step generators: VSD (Wang et al. 2023, ProlificDreamer, Eq. 9),
SwiftBrush (Nguyen & Tran 2024: a LoRA teacher as the fake score, image-free) and SNOOPI's proper guidance
(Nguyen et al. 2024, PG-SwiftBrush: a random guidance scale shared by both scores).

With x = G(z), x_t = a_t x + s_t eps and eps_real / eps_fake the teacher's / fake score's noise predictions,
the generator follows (ProlificDreamer Eq. 9)

    grad_x = w(t) (eps_real(x_t, t, c; w_cfg) - eps_fake(x_t, t, c; w_cfg)),   w(t) = s_t^2 (or 1)

applied through DMD's surrogate 0.5 ||x - sg(x - grad)||^2 (no backprop through either network), while
the fake score (a LoRA on the teacher by default) learns p_G by denoising score matching on sg(x).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import field_validator
from torch import Tensor

from ..diffusion import expand_like
from ..models.base import Denoiser
from .base import Batch, Objective
from .dmd import DistributionMatching, FakeScoreConfig, MatchingConfig, gan_settings, make_fake_score, surrogate_loss
from .fake_score import FakeScore
from .registry import register


def vsd_gradient(real_eps: Tensor, fake_eps: Tensor, weight: Tensor) -> Tensor:
    """ProlificDreamer Eq. 9's integrand: w(t) (eps_real - eps_fake), w per sample."""
    return expand_like(weight, real_eps).float() * (real_eps.float() - fake_eps.float())


class VariationalScoreDistillation(DistributionMatching):
    """VSD / SwiftBrush with optional proper (random-scale, shared) guidance."""

    def __init__(self, student: Denoiser, teacher: Denoiser, fake_score: FakeScore, *,
                 guidance_range: tuple[float, float] | None = None, weighting: Literal["sigma2", "uniform"] = "sigma2",
                 **kwargs):
        super().__init__(student, teacher, fake_score, **kwargs)
        self.guidance_range, self.weighting = guidance_range, weighting

    def guidance(self, n: int, generator: torch.Generator,
                 device: torch.device) -> tuple[Tensor | float, Tensor | float]:
        """(teacher scale, fake-score scale): fixed CFG on the teacher only, or one random scale per sample for
        both scores (SNOOPI's proper guidance)."""
        if self.guidance_range is None:
            return self.guidance_scale, 1.0
        lo, hi = self.guidance_range
        scale = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        return scale, scale

    def matching_loss(self, x: Tensor, batch: Batch, generator: torch.Generator,
                      input_times: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        fake = self.fake_score
        assert fake is not None
        path = self.teacher.path
        t = self.noise_times(len(x), generator, x.device)
        x_t = path.add_noise(x.detach(), self.noise_like(x, generator), t)
        real_scale, fake_scale = self.guidance(len(x), generator, x.device)
        with torch.no_grad():
            real_eps = self.teacher.predict(x_t, t, batch.cond, target="epsilon", guidance_scale=real_scale)
            fake_eps = fake.predict(x_t, t, batch.cond, target="epsilon", guidance_scale=fake_scale)
        weight = path.sigma(t).pow(2) if self.weighting == "sigma2" else torch.ones_like(t)
        grad = vsd_gradient(real_eps, fake_eps, weight)
        loss = surrogate_loss(x, grad)
        return loss, {"vsd_loss": loss.detach(), "vsd/grad_abs": grad.abs().mean()}


class VSDConfig(MatchingConfig):
    """VSD / SwiftBrush: 1 step, LoRA fake score on the teacher, prompt dropout for its CFG branch."""

    name: Literal["vsd"] = "vsd"
    student_times: list[float] | None = None
    backward_simulation: bool = True
    guidance_range: tuple[float, float] | None = None  # set: SNOOPI's proper guidance, a random scale for both
    weighting: Literal["sigma2", "uniform"] = "sigma2"
    fake_cond_dropout: float = 0.1
    fake_score: FakeScoreConfig = FakeScoreConfig(mode="lora", lora_rank=64)

    @field_validator("guidance_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 < v[0] <= v[1]:
            raise ValueError(f"guidance_range must satisfy 0 < min <= max, got {v}")
        return v


def _build_vsd(cfg: VSDConfig, student: Denoiser, teacher: Denoiser) -> Objective:
    return VariationalScoreDistillation(
        student, teacher, make_fake_score(cfg, student, teacher), guidance_range=cfg.guidance_range,
        weighting=cfg.weighting, student_times=cfg.student_times, guidance_scale=cfg.guidance_scale,
        time_range=cfg.time_range, time_shift=cfg.time_shift, fake_score_updates=cfg.fake_score_updates,
        backward_simulation=cfg.backward_simulation, **gan_settings(cfg.gan), fake_cond_dropout=cfg.fake_cond_dropout)


register("vsd", VSDConfig, _build_vsd)
