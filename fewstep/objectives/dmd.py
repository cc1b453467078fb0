"""Distribution Matching Distillation: DMD (Yin et al. 2024, CVPR) and DMD2 (Yin et al. 2024, NeurIPS).

The generator G is the student's x0 prediction at fixed student times (one time: a 1-step generator).
Its update follows the gradient of KL(p_fake || p_real) over noise levels t (DMD Eq. 7-8):

    grad = (x0_fake(x_t) - x0_real(x_t)) / mean|x - x0_real(x_t)|,   x_t = a_t x + s_t eps, x = G(z)

(the score difference s_fake - s_real = a_t (x0_fake - x0_real) / s_t^2; DMD's weight s_t^2 / a_t / mean|.|
cancels the prefactor), applied through the surrogate 0.5 ||x - sg(x - grad)||^2, whose gradient in x is
`grad` (over the number of elements, as DMD2's code reduces by the mean). x0_real is the frozen teacher
with CFG, x0_fake a denoiser of p_fake trained by denoising score matching on G's samples
(fewstep.objectives.fake_score). DMD adds a regression loss on teacher ODE pairs (Eq. 9); DMD2 drops it
and adds two-time-scale updates (§4.2), a GAN head on the fake score (§4.3) and multi-step generators
trained on backward-simulated inputs (§4.4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import field_validator
from torch import Tensor, nn

from ..config import StrictModel
from ..diffusion.timesteps import _trainable_range
from ..models.base import NON_BATCHED_COND_KEYS, Cond, Denoiser
from . import gan
from .base import Batch, Objective, Phase, drop_conditions, initial_state, time_like
from .generator import FewStepGenerator, pairwise_diversity
from .fake_score import FakeScore, build_fake_score
from .registry import register


# ---- the DMD update, as functions (shared by every variant and by tests) ----
def dmd_gradient(x: Tensor, real_x0: Tensor, fake_x0: Tensor) -> Tensor:
    """DMD Eq. 7-8: (fake - real) weighted per sample by 1 / mean_{non-batch} |x - real|."""
    x, real_x0, fake_x0 = x.float(), real_x0.float(), fake_x0.float()
    weight = 1.0 / (x - real_x0).abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return (fake_x0 - real_x0) * weight


def surrogate_loss(x: Tensor, grad: Tensor) -> Tensor:
    """0.5 ||x - sg(x - grad)||^2, mean over elements: d loss / dx = grad / x.numel()."""
    x = x.float()
    return 0.5 * (x - (x - grad.float()).detach()).pow(2).mean()


def load_regression_pairs(path: str | Path) -> tuple[Tensor, Tensor, Cond | None]:
    """(noise, teacher ODE sample, cond) written by scripts/make_dmd_pairs.py."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"regression pairs {path} not found; make them with scripts/make_dmd_pairs.py")
    tensors = load_file(str(path))
    if "noise" not in tensors or "sample" not in tensors:
        raise ValueError(f"{path} is not a DMD pair file (needs 'noise' and 'sample'; has {sorted(tensors)})")
    cond = {k.removeprefix("cond."): v for k, v in tensors.items() if k.startswith("cond.")}
    return tensors["noise"], tensors["sample"], cond or None


class DistributionMatching(FewStepGenerator):
    """DMD / DMD2. Networks: student (the generator) and fake_score (+ its GAN head)."""

    divergence_hint = ("lower optimizers.student.lr, raise fake_score_updates, or check that the generator does not "
                       "reproduce the real score's x0 exactly (the DMD weight divides by mean|x - real_x0|)")

    def __init__(self, student: Denoiser, teacher: Denoiser, fake_score: FakeScore | None, *,
                 student_times: list[float] | None = None, guidance_scale: float = 1.0,
                 time_range: tuple[float, float] = (0.02, 0.98), time_shift: float = 1.0, fake_score_updates: int = 1,
                 backward_simulation: bool = True, gan_generator_weight: float = 0.0,
                 gan_discriminator_weight: float = 0.0, gan_time_range: tuple[float, float] | None = None,
                 regression_pairs: str | Path | None = None,
                 regression_weight: float = 0.25, regression_batch_size: int | None = None,
                 fake_cond_dropout: float = 0.0):
        super().__init__(student, teacher, student_times=student_times, time_range=time_range, time_shift=time_shift,
                         backward_simulation=backward_simulation)
        self.fake_score = fake_score
        if fake_score is not None:  # a LoRA fake score lives on the teacher's modules: keep the adapter trainable
            fake_score.requires_grad_(True)
        self.guidance_scale, self.fake_score_updates = guidance_scale, fake_score_updates
        self.fake_cond_dropout = fake_cond_dropout
        self.gan_generator_weight, self.gan_discriminator_weight = gan_generator_weight, gan_discriminator_weight
        self.gan_time_range = gan_time_range
        if (gan_generator_weight or gan_discriminator_weight) and (fake_score is None or fake_score.head is None):
            raise ValueError("GAN weights need a fake score with a discriminator head (gan.enabled)")
        self.regression_weight, self.regression_batch_size = regression_weight, regression_batch_size
        self.regression_cond: Cond | None = None
        if regression_pairs is not None:
            noise, sample, self.regression_cond = load_regression_pairs(regression_pairs)
            self.register_buffer("regression_noise", noise, persistent=False)
            self.register_buffer("regression_sample", sample, persistent=False)

    # ---- the trainer's view ----
    def trainable_networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {"student": self.student}
        if self.fake_score is not None:
            nets["fake_score"] = self.fake_score
        return nets

    def phases(self) -> list[Phase]:
        """DMD2 §4.2: `fake_score_updates` fake-score steps per generator step (two time-scale)."""
        generator_phase = Phase("generator", "student")
        if self.fake_score is None:
            return [generator_phase]
        return [Phase("fake_score", "fake_score", self.fake_score_updates), generator_phase]

    def loss(self, phase: str, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        if phase == "fake_score":
            return self.fake_score_loss(batch, generator)
        if phase == "generator":
            return self.generator_loss(batch, generator)
        raise ValueError(f"unknown phase {phase!r}")

    def generator_loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        x, input_times = self.generate_with_times(batch, generator)
        loss, logs = self.matching_loss(x, batch, generator, input_times)
        adversarial = self.adversarial_loss(x, batch, generator) if self.gan_generator_weight else None
        if adversarial is not None:
            gan_loss, logits = adversarial
            loss = loss + self.gan_generator_weight * gan_loss
            logs.update({"gan/g_loss": gan_loss.detach(), **gan.logit_logs("gan/g", None, logits)})
        if hasattr(self, "regression_noise"):
            reg = self.regression_loss(generator, self.regression_batch_size or len(x))
            loss = loss + self.regression_weight * reg
            logs["regression_loss"] = reg.detach()
        logs["diversity"] = pairwise_diversity(x)
        return loss, logs

    def matching_loss(self, x: Tensor, batch: Batch, generator: torch.Generator,
                      input_times: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The DMD term (Eq. 7-8) at one noise level per sample. input_times: the path time of each sample's
        generator input, for terms whose noise levels depend on it (decoupled DMD's CA)."""
        t = self.noise_times(len(x), generator, x.device)
        x_t = self.teacher.path.add_noise(x.detach(), self.noise_like(x, generator), t)
        with torch.no_grad():
            real_x0 = self.teacher.predict(x_t, t, batch.cond, guidance_scale=self.guidance_scale)
            fake_x0 = self.fake_score.predict(x_t, t, batch.cond)  # type: ignore[union-attr]
            grad = dmd_gradient(x, real_x0, fake_x0)
        loss = surrogate_loss(x, grad)
        return loss, {"dmd_loss": loss.detach(), "dmd/grad_abs": grad.abs().mean()}

    def adversarial_loss(self, x: Tensor, batch: Batch, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
        """DMD2 §4.3: the non-saturating generator loss on the fake score's head at a fresh noise level
        -> (loss, logits); None where a subclass folds its GAN term into matching_loss."""
        t = self.noise_times(len(x), generator, x.device, self.gan_time_range)
        noisy = self.teacher.path.add_noise(x, self.noise_like(x, generator), t)
        _, logits = self.fake_score.forward_with_logits(noisy, t, batch.cond, wrapped=False)  # type: ignore[union-attr]
        return gan.generator_loss(logits), logits

    def regression_loss(self, generator: torch.Generator, batch_size: int) -> Tensor:
        """DMD Eq. 9 with an L2 distance (DMD uses LPIPS): G(z) against the teacher's ODE sample from z, on
        batch_size random pairs."""
        n = len(self.regression_noise)
        size = min(batch_size, n)
        idx = torch.randint(0, n, (size,), generator=generator, device=self.regression_noise.device)
        cond = None if self.regression_cond is None else {
            k: (v if k in NON_BATCHED_COND_KEYS else v[idx]).to(self.regression_noise.device)
            for k, v in self.regression_cond.items()}
        start = initial_state(self.regression_noise[idx], self.teacher.path, self.times[0])
        x = self.student.predict(start, time_like(self.times[0], size, start.device), cond)
        return (x.float() - self.regression_sample[idx].float()).pow(2).mean()

    # ---- the fake score ----
    def fake_score_loss(self, batch: Batch, generator: torch.Generator, guidance_scale: float = 1.0
                        ) -> tuple[Tensor, dict[str, Tensor]]:
        """DMD Eq. 6 on G's samples; DMD2 §4.3 adds the discriminator loss on the same forward (on one more
        forward where the GAN has noise levels of its own, gan_time_range)."""
        fake = self.fake_score
        assert fake is not None
        with torch.no_grad():
            x = self.generate(batch, generator)
        t = self.noise_times(len(x), generator, x.device)
        with_gan = bool(self.gan_discriminator_weight)
        cond = drop_conditions(fake, batch.cond, self.fake_cond_dropout, generator)
        shared = with_gan and self.gan_time_range is None
        loss, fake_logits = fake.denoising_loss(x, self.noise_like(x, generator), t, cond, with_logits=shared,
                                               guidance_scale=guidance_scale)
        logs = {"fake_score_loss": loss.detach()}
        if with_gan:
            if fake_logits is None:
                t_fake = self.noise_times(len(x), generator, x.device, self.gan_time_range)
                fake_noisy = self.teacher.path.add_noise(x, self.noise_like(x, generator), t_fake)
                _, fake_logits = fake.forward_with_logits(fake_noisy, t_fake, batch.cond)
            t_real = self.noise_times(len(batch), generator, x.device, self.gan_time_range)
            real_noisy = self.teacher.path.add_noise(batch.x0, self.noise_like(batch.x0, generator), t_real)
            _, real_logits = fake.forward_with_logits(real_noisy, t_real, batch.cond)
            d_loss = gan.discriminator_loss(real_logits, fake_logits)
            loss = loss + self.gan_discriminator_weight * d_loss
            logs.update({"gan/d_loss": d_loss.detach(), **gan.logit_logs("gan/d", real_logits, fake_logits)})
        return loss, logs

    # ---- diagnostics ----
    @torch.no_grad()
    def diagnostics(self, batch: Batch, generator: torch.Generator, noise_fraction: float = 0.5) -> dict[str, Tensor]:
        """Images for a health grid: generator samples, the same samples noised to one level, and the real
        and fake scores' x0 predictions there (DMD2 #33: look at all three)."""
        noise = self.noise_like(batch.x0, generator)
        x = self.sample(noise, self.num_steps, batch.cond, generator)
        lo, hi = _trainable_range(self.teacher.path)
        t = time_like(lo + (hi - lo) * noise_fraction, len(x), x.device)
        x_t = self.teacher.path.add_noise(x, self.noise_like(x, generator), t)
        out = {"generator": x, "noisy": x_t,
               "real_score_x0": self.teacher.predict(x_t, t, batch.cond, guidance_scale=self.guidance_scale)}
        if self.fake_score is not None:
            out["fake_score_x0"] = self.fake_score.predict(x_t, t, batch.cond)
        return out


# ---- configuration and registration ----
def check_time_range(v: tuple[float, float], name: str = "time_range") -> tuple[float, float]:
    if not 0.0 <= v[0] < v[1] <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= min < max <= 1, got {v}")
    return v


class FakeScoreConfig(StrictModel):
    """copy: a full fp32 copy of the teacher; lora: an adapter on the frozen teacher (no second copy)."""

    mode: Literal["copy", "lora"] = "copy"
    lora_rank: int = 16
    lora_alpha: float | None = None
    lora_target_modules: list[str] | None = None


class GANConfig(StrictModel):
    """DMD2 §4.3: classifier head on the fake score's features; 0 weights = off."""

    generator_weight: float = 0.0
    discriminator_weight: float = 0.0
    tap: str | None = None  # a Denoiser feature tap; None: the bottleneck
    feature_channels: int | None = None  # None: inferred from the tap module
    # the head's lr = the fake score's x this (two time-scale, Heusel et al. 2017): a fresh head at a fake-score lr
    # stays near chance for thousands of steps, so on short budgets its GAN term is noise
    head_lr_scale: float = 1.0
    # noise levels (fractions of the path) of the GAN terms; None: the fake score's time_range. Real and generated
    # samples differ in detail, which noise hides: a head at t near 1 is at chance whatever it learns
    time_range: tuple[float, float] | None = None

    @field_validator("time_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        return v if v is None else check_time_range(v)

    @property
    def enabled(self) -> bool:
        return bool(self.generator_weight or self.discriminator_weight)


class MatchingConfig(StrictModel):
    """Settings every distribution-matching variant shares."""

    guidance_scale: float = 1.0  # CFG of the real score
    time_range: tuple[float, float] = (0.02, 0.98)  # noise levels, as fractions of the path's time axis
    time_shift: float = 1.0
    fake_score_updates: int = 1  # fake-score steps per generator step
    fake_cond_dropout: float = 0.0  # condition dropout when training the fake score (keeps its CFG branch)
    fake_score: FakeScoreConfig = FakeScoreConfig()
    gan: GANConfig = GANConfig()

    @field_validator("time_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        return check_time_range(v)

    @field_validator("fake_score_updates")
    @classmethod
    def _updates(cls, v: int) -> int:
        if v < 1:
            raise ValueError("fake_score_updates must be >= 1")
        return v


class DMDConfig(MatchingConfig):
    """DMD: 1-step by default, regression loss on teacher ODE pairs when regression_pairs is set."""

    name: Literal["dmd"] = "dmd"
    student_times: list[float] | None = None  # decreasing path times; None: [t_max] (1 step)
    backward_simulation: bool = True
    regression_pairs: str | None = None  # safetensors from scripts/make_dmd_pairs.py
    regression_weight: float = 0.25
    regression_batch_size: int | None = None  # pairs per generator step; None: the data batch size

    @field_validator("student_times")
    @classmethod
    def _times(cls, t: list[float] | None) -> list[float] | None:
        if t is not None and (not t or any(a <= b for a, b in zip(t, t[1:]))):
            raise ValueError(f"must be a non-empty strictly decreasing list of path times, got {t}")
        return t


class DMD2Config(DMDConfig):
    """DMD2: no regression, two-time-scale updates, GAN head (weights of DMD2's SDXL recipe)."""

    name: Literal["dmd2"] = "dmd2"  # type: ignore[assignment]
    fake_score_updates: int = 5
    gan: GANConfig = GANConfig(generator_weight=5e-3, discriminator_weight=1e-2)


def gan_settings(g: GANConfig) -> dict:
    """DistributionMatching's GAN keywords from a recipe's gan block."""
    return {"gan_generator_weight": g.generator_weight, "gan_discriminator_weight": g.discriminator_weight,
            "gan_time_range": g.time_range}


def make_fake_score(cfg: MatchingConfig, student: Denoiser, teacher: Denoiser) -> FakeScore:
    fs, g = cfg.fake_score, cfg.gan
    return build_fake_score(teacher, student, fs.mode, fs.lora_rank, fs.lora_alpha, fs.lora_target_modules,
                            gan=g.enabled, gan_tap=g.tap, gan_channels=g.feature_channels,
                            gan_head_lr_scale=g.head_lr_scale)


def _build_dmd(cfg: DMDConfig, student: Denoiser, teacher: Denoiser) -> Objective:
    return DistributionMatching(
        student, teacher, make_fake_score(cfg, student, teacher), student_times=cfg.student_times,
        guidance_scale=cfg.guidance_scale, time_range=cfg.time_range, time_shift=cfg.time_shift,
        fake_score_updates=cfg.fake_score_updates, backward_simulation=cfg.backward_simulation,
        **gan_settings(cfg.gan), regression_pairs=cfg.regression_pairs, regression_weight=cfg.regression_weight,
        regression_batch_size=cfg.regression_batch_size, fake_cond_dropout=cfg.fake_cond_dropout)


register("dmd", DMDConfig, _build_dmd)
register("dmd2", DMD2Config, _build_dmd)
