"""Phased DMD (Fan et al. 2025, "Few-step Distribution Matching Distillation via Score Matching within
Subintervals").

The time axis is cut at boundaries t_max = b_0 > b_1 > ... > b_K = t_min (the SNR range into K
subintervals). Expert k owns (b_{k+1}, b_k]: from x at b_k it predicts x0 and steps (DDIM) to
x_s at s = b_{k+1}. Phases are trained one after the other from low to high SNR; the frozen earlier
experts produce phase k's inputs, and its outputs feed phase k+1.

Phase k matches the distribution of x_s. Its fake score models p_fake,s diffused further to t > s,
x_t = r x_s + sigma_{t|s} n with r = a_t / a_s, sigma_{t|s}^2 = s_t^2 - r^2 s_s^2. Derivation of the
subinterval target: q(x_s | x_t, x0) is Gaussian with mean affine in x0 (DDPM's posterior),

    mu(x_t, x0) = (r s_s^2 x_t + a_s sigma_{t|s}^2 x0) / s_t^2,

so by the tower rule E[x_s | x_t] = mu(x_t, E[x0 | x_t]). Hence a network in the teacher's
parameterisation, read as x0_hat, gives the subinterval posterior mean mu(x_t, x0_hat), and the
subinterval denoising loss is || mu(x_t, x0_hat(x_t)) - x_s ||^2 with x_s the generator's state at s,
diffused from s (not from clean data). Its minimiser is E_fake[x_s | x_t]; the real counterpart is
mu(x_t, x0_teacher), and the DMD update of phase k is (m_fake - m_real) / mean|x_s - m_real| on x_s.
For the last phase (s = t_min: a_s = 1, s_s = 0) mu = x0 and everything reduces to plain DMD.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
from pydantic import model_validator
from torch import Tensor, nn

from ..diffusion import GaussianPath, expand_like, forward_noise
from ..models.base import NON_BATCHED_COND_KEYS, Cond, Denoiser
from .base import Batch, Objective, initial_state, time_like
from .dmd import DistributionMatching, MatchingConfig, dmd_gradient, make_fake_score, surrogate_loss
from .generator import interval_times, pairwise_diversity
from .fake_score import FakeScore, active_adapter, peft_layers
from .registry import register


def subinterval_posterior_mean(x_t: Tensor, x0: Tensor, s: Tensor, t: Tensor, path: GaussianPath) -> Tensor:
    """E[x_s | x_t] from an estimate of E[x0 | x_t]: mu = (r s_s^2 x_t + a_s sigma_{t|s}^2 x0) / s_t^2."""
    a_s, s_s, a_t, s_t = path.alpha(s), path.sigma(s), path.alpha(t), path.sigma(t)
    r = a_t / a_s
    var_ts = s_t ** 2 - (r * s_s) ** 2
    c_x, c_0 = r * s_s ** 2 / s_t ** 2, a_s * var_ts / s_t ** 2
    return expand_like(c_x, x_t) * x_t.float() + expand_like(c_0, x0) * x0.float()


def slice_cond(cond: Cond | None, mask: Tensor) -> Cond | None:
    if cond is None:
        return None
    return {k: v if k in NON_BATCHED_COND_KEYS else v[mask] for k, v in cond.items()}


class PhasedStudent(Denoiser):
    """K experts routed by time: expert k answers for t in (b_{k+1}, b_k] (`interior` = b_1 > ... > b_{K-1}).

    experts="copy": K separate networks. experts="lora": one network with K LoRA adapters (the
    student's own "default" adapter is expert 0); routing switches the active adapter per sub-batch.
    """

    def __init__(self, student: Denoiser, interior: list[float], experts: Literal["copy", "lora"] = "copy"):
        super().__init__(student.path, student.prediction_type)
        self.register_buffer("interior", torch.tensor(interior, dtype=torch.float64), persistent=False)
        self.mode = experts
        k = len(interior) + 1
        if experts == "copy":
            self.experts = nn.ModuleList([student] + [copy.deepcopy(student) for _ in range(k - 1)])
            return
        from ..config import ConfigError
        from ..models.lora import add_lora

        model = getattr(student, "model", None)
        if model is None or not peft_layers(model) or "default" not in getattr(model, "peft_config", {}):
            raise ConfigError("config error: objective.experts: 'lora' needs a LoRA student (student.lora.rank=...); "
                              "or use experts: copy")
        if getattr(model, "is_gradient_checkpointing", False):
            raise ConfigError("config error: objective.experts: 'lora' cannot be combined with gradient checkpointing "
                              "(the adapter is switched per call); "
                              "use experts: copy or run.gradient_checkpointing=false")
        base = model.peft_config["default"]
        self.adapters = ["default"] + [f"phase_{i}" for i in range(1, k)]
        with warnings.catch_warnings():  # peft warns that the model will hold several adapters: intended here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            for name in self.adapters[1:]:
                add_lora(student, rank=base.r, alpha=base.lora_alpha, dropout=base.lora_dropout,
                         target_modules=sorted(base.target_modules), adapter_name=name)
        self.experts = nn.ModuleList([student])

    @property
    def num_experts(self) -> int:
        return len(self.interior) + 1

    def expert_index(self, t: Tensor) -> Tensor:
        """k with t in (b_{k+1}, b_k]: the number of interior boundaries at or above t."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.interior.device)
        return (t.reshape(-1, 1) <= self.interior.reshape(1, -1)).sum(1)

    def run_expert(self, k: int, x_t: Tensor, t: Tensor, cond: Cond | None) -> Tensor:
        if self.mode == "copy":
            return self.experts[k](x_t, t, cond)
        with active_adapter(self.experts[0].model, self.adapters[k]):
            return self.experts[0](x_t, t, cond)

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        index = self.expert_index(t).to(x_t.device)
        present = index.unique().tolist()
        if len(present) == 1:
            return self.run_expert(present[0], x_t, t, cond)
        out = torch.zeros_like(x_t)
        for k in present:
            mask = index == k
            out[mask] = self.run_expert(k, x_t[mask], t[mask], slice_cond(cond, mask)).to(out.dtype)
        return out

    def null_cond(self, cond: Cond) -> Cond:
        return self.experts[0].null_cond(cond)


class PhasedDMD(DistributionMatching):
    """Networks: student (the PhasedStudent mixture) and fake_score. One phase trains at a time."""

    def __init__(self, student: Denoiser, teacher: Denoiser, fake_score: FakeScore, *, boundaries: list[float],
                 steps_per_phase: int, experts: Literal["copy", "lora"] = "copy",
                 dmd_time_range: Literal["subinterval", "above"] = "subinterval",
                 boundary_step: Literal["ddim", "renoise"] = "ddim", **kwargs):
        mixture = PhasedStudent(student, boundaries, experts)
        super().__init__(mixture, teacher, fake_score, student_times=None, **kwargs)
        path = teacher.path
        full = [path.t_max, *boundaries, path.t_min]
        if any(a <= b for a, b in zip(full, full[1:])):
            raise ValueError(f"boundaries must be strictly decreasing inside ({path.t_min}, {path.t_max}), "
                             f"got {boundaries}")
        self.register_buffer("boundaries", torch.tensor(full, dtype=torch.float64), persistent=False)
        self.register_buffer("generator_updates", torch.zeros((), dtype=torch.long))
        self.steps_per_phase, self.dmd_time_range, self.boundary_step = steps_per_phase, dmd_time_range, boundary_step

    @property
    def phase(self) -> int:
        return min(int(self.generator_updates) // self.steps_per_phase, self.student.num_experts - 1)

    @property
    def num_steps(self) -> int:
        return self.student.num_experts

    def after_update(self, phase: str) -> None:
        if phase == "generator":
            self.generator_updates += 1

    def extra_state(self) -> dict[str, Tensor]:
        return {"generator_updates": self.generator_updates.detach().clone()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.generator_updates.copy_(state["generator_updates"])

    # ---- the phase's generator ----
    def step_to(self, x: Tensor, t: float | Tensor, x0: Tensor, s: float | Tensor,
                generator: torch.Generator) -> Tensor:
        """Expert output at the phase's lower boundary s: DDIM with the expert's own eps, or re-noising."""
        path, n = self.teacher.path, len(x)
        t, s = time_like(t, n, x.device), time_like(s, n, x.device)
        if self.boundary_step == "renoise":
            eps = self.noise_like(x, generator)
        else:
            eps = (x - expand_like(path.alpha(t), x) * x0) / expand_like(path.sigma(t), x)
        return path.add_noise(x0, eps, s)

    @torch.no_grad()
    def rollout(self, noise: Tensor, upto: int, cond: Cond | None, generator: torch.Generator) -> Tensor:
        """State at b_upto from noise, through experts 0..upto-1 (frozen for the current phase)."""
        x = initial_state(noise, self.teacher.path, self.boundaries[0])
        for k in range(upto):
            x0 = self.student.predict(x, time_like(self.boundaries[k], len(x), x.device), cond)
            x = self.step_to(x, self.boundaries[k], x0, self.boundaries[k + 1], generator)
        return x

    def phase_output(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x_s, s): the current expert's output at its lower boundary, differentiable in its weights."""
        k = self.phase
        x_in = self.rollout(self.noise_like(batch.x0, generator), k, batch.cond, generator)
        t_in, s = self.boundaries[k], self.boundaries[k + 1]
        x0 = self.student.predict(x_in, time_like(t_in, len(x_in), x_in.device), batch.cond)
        return self.step_to(x_in, t_in, x0, s, generator), time_like(s, len(x_in), x_in.device)

    def subinterval_times(self, s: Tensor, generator: torch.Generator) -> Tensor:
        upper = self.boundaries[self.phase] if self.dmd_time_range == "subinterval" else self.boundaries[0]
        return interval_times(s, upper, len(s), generator, s.device, self.time_range, self.time_shift)

    def generator_loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        x_s, s = self.phase_output(batch, generator)
        t = self.subinterval_times(s, generator)
        path = self.teacher.path
        x_t = forward_noise(x_s.detach(), s, t, self.noise_like(x_s, generator), path)
        with torch.no_grad():
            real_x0 = self.teacher.predict(x_t, t, batch.cond, guidance_scale=self.guidance_scale)
            fake_x0 = self.fake_score.predict(x_t, t, batch.cond)  # type: ignore[union-attr]
            real = subinterval_posterior_mean(x_t, real_x0, s, t, path)
            fake = subinterval_posterior_mean(x_t, fake_x0, s, t, path)
            grad = dmd_gradient(x_s, real, fake)
        loss = surrogate_loss(x_s, grad)
        return loss, {"dmd_loss": loss.detach(), "dmd/grad_abs": grad.abs().mean(),
                      "diversity": pairwise_diversity(x_s), "phase": torch.tensor(float(self.phase))}

    def fake_score_loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Subinterval denoising: x_t diffused from the generator's x_s, target E[x_s | x_t]."""
        with torch.no_grad():
            x_s, s = self.phase_output(batch, generator)
        t = self.subinterval_times(s, generator)
        path = self.teacher.path
        x_t = forward_noise(x_s, s, t, self.noise_like(x_s, generator), path)
        fake_x0 = self.fake_score.predict(x_t, t, batch.cond)  # type: ignore[union-attr]
        loss = (subinterval_posterior_mean(x_t, fake_x0, s, t, path) - x_s.float()).pow(2).mean()
        return loss, {"fake_score_loss": loss.detach()}

    # ---- sampling ----
    def sampling_times(self, num_steps: int) -> Tensor:
        if num_steps != self.num_steps:
            raise ValueError(f"a phased DMD student samples with exactly {self.num_steps} steps (one per expert); "
                             f"got {num_steps} (set run.sample_steps=[{self.num_steps}])")
        return self.boundaries[:-1]

    @torch.no_grad()
    def sample(self, noise: Tensor, num_steps: int, cond: Cond | None, generator: torch.Generator) -> Tensor:
        self.sampling_times(num_steps)
        x = self.rollout(noise, self.num_steps - 1, cond, generator)
        return self.student.predict(x, time_like(self.boundaries[-2], len(x), x.device), cond)


# ---- configuration and registration ----
class PhasedDMDConfig(MatchingConfig):
    name: Literal["phased_dmd"] = "phased_dmd"
    boundaries: list[float]  # interior phase boundaries in path time, decreasing (e.g. flow [0.5]; VP [499])
    steps_per_phase: int = 200  # generator updates per phase, then the next (higher-SNR) phase starts
    experts: Literal["copy", "lora"] = "copy"
    dmd_time_range: Literal["subinterval", "above"] = "subinterval"  # t in (s, b_k] or (s, t_max]
    boundary_step: Literal["ddim", "renoise"] = "ddim"

    @model_validator(mode="after")
    def _checks(self) -> "PhasedDMDConfig":
        if self.gan.enabled:
            raise ValueError("gan: not supported by phased_dmd (its generator outputs are noisy states x_s)")
        if self.steps_per_phase < 1:
            raise ValueError("steps_per_phase must be >= 1")
        return self


def _build_phased(cfg: PhasedDMDConfig, student: Denoiser, teacher: Denoiser) -> Objective:
    return PhasedDMD(student, teacher, make_fake_score(cfg, student, teacher), boundaries=cfg.boundaries,
                     steps_per_phase=cfg.steps_per_phase, experts=cfg.experts, dmd_time_range=cfg.dmd_time_range,
                     boundary_step=cfg.boundary_step, guidance_scale=cfg.guidance_scale, time_range=cfg.time_range,
                     time_shift=cfg.time_shift, fake_score_updates=cfg.fake_score_updates)


register("phased_dmd", PhasedDMDConfig, _build_phased)
