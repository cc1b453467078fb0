"""Adversarial distillation: ADD (Sauer et al. 2023, "Adversarial Diffusion Distillation") and LADD (Sauer et
al. 2024, "Fast High-Resolution Image Synthesis with Latent Adversarial Diffusion Distillation").

The generator x_hat = G(x_s, s) is trained with (ADD Eq. 6)

    L_G = L_adv^G(D(x_hat)) + lambda * E_t c(t) ||x_hat - x0_teacher(sg(a_t x_hat + s_t eps), t)||^2   (Eq. 5)

and the discriminator D (frozen features + trainable heads, fewstep.objectives.discriminator) with the hinge
loss on real against generated samples, plus an R1 penalty (ADD §3.2) or its approximation (APT). ADD reads
clean samples (student inputs: real data noised to the student times, §3.1); LADD reads the teacher's
features of samples re-noised to t drawn towards high noise (§3.2) and needs no distillation term
(lambda = 0); its "real" samples may be real data or teacher generations (point `data` at either).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import field_validator
from torch import Tensor, nn

from ..config import StrictModel
from ..diffusion.timesteps import _trainable_range
from ..models.base import Cond, Denoiser
from . import gan
from .base import Batch, Phase
from .discriminator import ConditionEmbedding, FeatureDiscriminator, default_backbone, load_backbone
from .generator import FewStepGenerator, interval_times, pairwise_diversity
from .registry import register


class AdversarialTerm(nn.Module):
    """The discriminator and its two losses, shared by ADD, LADD and sCM + LADD (SANA-Sprint).

    noise_range None: D reads clean samples at the path's least noisy time (ADD); a (min, max) fraction of the
    path: samples are re-noised to t there, shifted towards high noise by noise_shift (LADD).
    """

    def __init__(self, discriminator: FeatureDiscriminator, path_times: tuple[float, float], *,
                 loss: Literal["hinge", "non_saturating"] = "hinge", noise_range: tuple[float, float] | None = None,
                 noise_shift: float = 3.0, r1_weight: float = 0.0, r1: Literal["exact", "approximate"] = "approximate",
                 r1_sigma: float = 0.01, monitor: gan.CollapseMonitor | None = None):
        super().__init__()
        self.discriminator = discriminator
        self.path_times, self.noise_range, self.noise_shift = path_times, noise_range, noise_shift
        self.d_loss, self.g_loss = gan.LOSSES[loss]
        self.r1_weight, self.r1, self.r1_sigma = r1_weight, r1, r1_sigma
        self.monitor = monitor or gan.CollapseMonitor()

    def inputs(self, x: Tensor, path, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(D's input, its time): x itself at the least noisy time, or x re-noised to a drawn t."""
        lo, hi = self.path_times
        n = x.shape[0]
        if self.noise_range is None:
            return x, torch.full((n,), lo, dtype=torch.float64, device=x.device)
        t = interval_times(lo, hi, n, generator, x.device, self.noise_range, self.noise_shift)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return path.add_noise(x, noise, t), t

    def generator_loss(self, x: Tensor, cond: Cond | None, path, generator: torch.Generator
                       ) -> tuple[Tensor, dict[str, Tensor]]:
        """Adversarial loss of generated samples x (with grad); D's heads are not updated by it (unwrapped call)."""
        x_in, t = self.inputs(x, path, generator)
        logits = self.discriminator(x_in, t, cond)
        loss = self.g_loss(logits)
        logs = {"adv/g_loss": loss.detach(), **gan.logit_logs("adv/g", None, logits)}
        return loss, logs

    def discriminator_loss(self, real: Tensor, fake: Tensor, cond: Cond | None, path, generator: torch.Generator
                           ) -> tuple[Tensor, dict[str, Tensor]]:
        real_in, t_real = self.inputs(real, path, generator)
        fake_in, t_fake = self.inputs(fake.detach(), path, generator)
        exact_r1 = self.r1_weight > 0 and self.r1 == "exact"
        if exact_r1:
            real_in = real_in.detach().requires_grad_(True)
        real_logits = self.discriminator.call(real_in, t_real, cond, backbone_grad=exact_r1)
        fake_logits = self.discriminator.call(fake_in, t_fake, cond, backbone_grad=False)
        loss = self.d_loss(real_logits, fake_logits)
        logs = {"adv/d_loss": loss.detach(), **gan.logit_logs("adv/d", real_logits, fake_logits)}
        if self.r1_weight > 0:  # on each sample's score: R1's gamma keeps its meaning with per-position logits
            if exact_r1:
                penalty = gan.r1_penalty(gan.sample_scores(real_logits), real_in)
            else:
                noise = torch.randn(real_in.shape, generator=generator, dtype=real_in.dtype, device=real_in.device)
                perturbed = self.discriminator.call(real_in + self.r1_sigma * noise, t_real, cond, backbone_grad=False)
                penalty = gan.approximate_r1(gan.sample_scores(real_logits), gan.sample_scores(perturbed),
                                             self.r1_sigma)
            loss = loss + 0.5 * self.r1_weight * penalty
            logs["adv/r1"] = penalty.detach()
        logs.update(self.monitor.check_accuracy(logs["adv/d/accuracy"]))
        return loss, logs


class AdversarialDistillation(FewStepGenerator):
    """ADD / LADD. Networks: student (the generator) and discriminator (heads only)."""

    divergence_hint = ("adversarial training diverged: lower optimizers.student.lr or objective.adversarial_weight, "
                       "raise objective.r1_weight, or (ADD) raise objective.distillation_weight")

    def __init__(self, student: Denoiser, teacher: Denoiser, adversarial: AdversarialTerm, *,
                 student_times: list[float] | None = None, data_inputs: bool = True, backward_simulation: bool = True,
                 adversarial_weight: float = 1.0, distillation_weight: float = 0.0,
                 distillation_weighting: Literal["exponential", "uniform"] = "exponential",
                 guidance_scale: float = 1.0, time_range: tuple[float, float] = (0.02, 0.98), time_shift: float = 1.0):
        super().__init__(student, teacher, student_times=student_times, time_range=time_range, time_shift=time_shift,
                         backward_simulation=backward_simulation, data_inputs=data_inputs)
        self.adversarial = adversarial
        self.adversarial_weight, self.distillation_weight = adversarial_weight, distillation_weight
        self.distillation_weighting, self.guidance_scale = distillation_weighting, guidance_scale

    def trainable_networks(self) -> dict[str, nn.Module]:
        return {"student": self.student, "discriminator": self.adversarial.discriminator}

    def phases(self) -> list[Phase]:
        return [Phase("discriminator", "discriminator"), Phase("generator", "student")]

    def loss(self, phase: str, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        if phase == "discriminator":
            with torch.no_grad():
                fake = self.generate(batch, generator)
            return self.adversarial.discriminator_loss(batch.x0, fake, batch.cond, self.teacher.path, generator)
        if phase == "generator":
            return self.generator_loss(batch, generator)
        raise ValueError(f"unknown phase {phase!r}")

    def distillation_loss(self, x: Tensor, cond: Cond | None, generator: torch.Generator) -> Tensor:
        """ADD Eq. 5 with d = squared L2: the teacher's x0 of the re-noised generation as the target;
        c(t) = alpha_t^2 (ADD's "exponential" weighting, alpha-bar_t of a VP schedule) or 1."""
        path = self.teacher.path
        t = self.noise_times(len(x), generator, x.device)
        with torch.no_grad():
            x_t = path.add_noise(x.detach(), self.noise_like(x, generator), t)
            target = self.teacher.predict(x_t, t, cond, guidance_scale=self.guidance_scale)
        weight = path.alpha(t).pow(2) if self.distillation_weighting == "exponential" else torch.ones_like(t)
        per_sample = (x.float() - target.float()).pow(2).flatten(1).mean(1)
        return (weight.to(per_sample) * per_sample).mean()

    def generator_loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        x = self.generate(batch, generator)
        adv, logs = self.adversarial.generator_loss(x, batch.cond, self.teacher.path, generator)
        loss = self.adversarial_weight * adv
        if self.distillation_weight:
            distill = self.distillation_loss(x, batch.cond, generator)
            loss = loss + self.distillation_weight * distill
            logs["distill_loss"] = distill.detach()
        logs["diversity"] = pairwise_diversity(x)
        logs.update(self.adversarial.monitor.check_diversity(logs["diversity"]))
        return loss, logs

    def extra_state(self) -> dict[str, Tensor]:
        return {f"monitor.{k}": v for k, v in self.adversarial.monitor.state().items()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.adversarial.monitor.load_state({k.removeprefix("monitor."): v for k, v in state.items()})

    @torch.no_grad()
    def diagnostics(self, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        return {"generator": self.sample(self.noise_like(batch.x0, generator), self.num_steps, batch.cond, generator),
                "real": batch.x0}


# ---- configuration and registration ----
class DiscriminatorConfig(StrictModel):
    """The discriminator: frozen backbone + heads on `taps`, hinge or non-saturating loss, R1."""

    backbone: str = "teacher"  # or 'package.module:factory' (a frozen image feature network of your own)
    taps: list[str] | None = None  # Denoiser feature taps; None: 3 spread over depth
    noise_range: tuple[float, float] | None = None  # None: clean samples (ADD); fractions of the path (LADD)
    noise_shift: float = 3.0  # > 1 moves the re-noising times towards high noise (LADD §3.2)
    time_conditioned: bool = True  # heads see the noise level (with noise_range)
    cond_conditioned: bool = True  # projection on the class / pooled text embedding
    time_dim: int = 64
    per_position: bool = True  # spatial taps: a logit per position, losses on each (StyleGAN-T heads, ADD §3.2)
    spectral_norm: bool = True  # on the heads' layers (StyleGAN-T)
    loss: Literal["hinge", "non_saturating"] = "hinge"
    r1_weight: float = 0.0  # gamma of R1, 0.5 gamma ||grad_x D||^2 (both forms estimate it)
    r1: Literal["exact", "approximate"] = "approximate"
    r1_sigma: float = 0.01
    collapse_diversity_ratio: float = 0.1  # stability guard: diversity below ratio x initial -> flagged
    collapse_patience: int = 100  # discriminator accuracy >= 0.99 for this many updates -> flagged
    stop_on_collapse: bool = False

    @field_validator("noise_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] < v[1] <= 1.0:
            raise ValueError(f"noise_range must satisfy 0 <= min < max <= 1, got {v}")
        return v


COND_DIM = 64  # width of the condition embedding the projection heads read


def make_adversarial(cfg: DiscriminatorConfig, student: Denoiser, teacher: Denoiser) -> AdversarialTerm:
    backbone = default_backbone(teacher) if cfg.backbone == "teacher" else load_backbone(cfg.backbone)
    time_dim = cfg.time_dim if cfg.time_conditioned and cfg.noise_range is not None else 0
    cond_embedding = ConditionEmbedding.of(teacher, COND_DIM) if cfg.cond_conditioned else None
    discriminator = FeatureDiscriminator(backbone, teacher.path, cfg.taps, time_dim, cond_embedding, COND_DIM,
                                         cfg.per_position, cfg.spectral_norm)
    device = next((p.device for p in student.parameters()), torch.device("cpu"))
    monitor = gan.CollapseMonitor(cfg.collapse_diversity_ratio, patience=cfg.collapse_patience,
                                  stop=cfg.stop_on_collapse)
    return AdversarialTerm(discriminator.to(device), tuple(float(v) for v in _trainable_range(teacher.path)),
                           loss=cfg.loss, noise_range=cfg.noise_range, noise_shift=cfg.noise_shift,
                           r1_weight=cfg.r1_weight, r1=cfg.r1, r1_sigma=cfg.r1_sigma, monitor=monitor)


class ADDConfig(StrictModel):
    """ADD: student inputs are real data noised to the student times; clean-sample discriminator; distillation
    term with lambda = 2.5 and exponential weighting (ADD §4)."""

    name: Literal["add"] = "add"
    student_times: list[float] | None = None  # decreasing path times; None: [t_max]
    data_inputs: bool = True
    backward_simulation: bool = True  # used when data_inputs is false
    adversarial_weight: float = 1.0
    distillation_weight: float = 2.5
    distillation_weighting: Literal["exponential", "uniform"] = "exponential"
    guidance_scale: float = 1.0  # CFG of the teacher in the distillation term
    time_range: tuple[float, float] = (0.02, 0.98)  # distillation-term noise levels (fractions of the path)
    time_shift: float = 1.0
    discriminator: DiscriminatorConfig = DiscriminatorConfig()


class LADDConfig(ADDConfig):
    """LADD: generator from noise (backward simulation for later steps), the teacher's multi-depth features
    of re-noised samples, time- and prompt-aware heads, no distillation term."""

    name: Literal["ladd"] = "ladd"  # type: ignore[assignment]
    data_inputs: bool = False
    distillation_weight: float = 0.0
    discriminator: DiscriminatorConfig = DiscriminatorConfig(noise_range=(0.0, 1.0))


def _build_adversarial(cfg: ADDConfig, student: Denoiser, teacher: Denoiser) -> AdversarialDistillation:
    return AdversarialDistillation(
        student, teacher, make_adversarial(cfg.discriminator, student, teacher), student_times=cfg.student_times,
        data_inputs=cfg.data_inputs, backward_simulation=cfg.backward_simulation,
        adversarial_weight=cfg.adversarial_weight, distillation_weight=cfg.distillation_weight,
        distillation_weighting=cfg.distillation_weighting, guidance_scale=cfg.guidance_scale,
        time_range=cfg.time_range, time_shift=cfg.time_shift)


register("add", ADDConfig, _build_adversarial)
register("ladd", LADDConfig, _build_adversarial)
