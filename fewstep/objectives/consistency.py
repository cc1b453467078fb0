"""Consistency distillation (Song et al. 2023, "Consistency Models", Alg. 2; LCM, Luo et al. 2023, Eq. 8-9).

The student f(x_t, t) = c_skip(t) x_t + c_out(t) F(x_t, t) is trained so that f at t_{n+k}
matches the EMA target f^- at t_n, where x_{t_n} is one teacher ODE step from x_{t_{n+k}}.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import Tensor, nn

from ..config import StrictModel
from ..diffusion import apply_lcm_boundary, lcm_boundary_scalings, solver_grid, solver_step
from ..models.base import Cond, Denoiser
from .base import Batch, Objective, renoise_sample


class BoundaryCondition:
    """The LCM boundary condition f = c_skip x_t + c_out x0 (diffusion.apply_lcm_boundary)."""

    def __init__(self, denoiser: Denoiser, boundary_time: float, sigma_data: float = 0.5,
                 timestep_scaling: float = 10.0):
        self.path = denoiser.path
        self.boundary_time = boundary_time
        self.sigma_data = sigma_data
        self.timestep_scaling = timestep_scaling

    def scalings(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return lcm_boundary_scalings(self.path, t, self.boundary_time, self.sigma_data, self.timestep_scaling)

    def __call__(self, net: Denoiser, x_t: Tensor, t: Tensor, cond: Cond | None) -> Tensor:
        x0 = net.predict(x_t, t, cond, target="sample")
        return apply_lcm_boundary(x_t, x0, t, self.path, self.boundary_time, self.sigma_data, self.timestep_scaling)


def consistency_distance(pred: Tensor, target: Tensor, kind: str, huber_c: float) -> Tensor:
    """Per-sample distance: 'l2' (mean squared) or 'pseudo_huber' (iCT, Song & Dhariwal 2023, Eq. 10)."""
    sq = (pred - target).pow(2).flatten(1)
    if kind == "l2":
        return sq.mean(1)
    if kind == "pseudo_huber":
        c = huber_c * sq.shape[1] ** 0.5  # iCT's c = 0.00054 sqrt(d)
        return (sq.sum(1) + c * c).sqrt() - c
    raise ValueError(f"unknown consistency loss {kind!r}; expected 'l2' or 'pseudo_huber'")


class ConsistencyTeacherConfig(StrictModel):
    """What every discrete-time CD variant (cd, mcm) sets about its teacher step, target and distance."""

    num_timesteps: int = 50
    solver: Literal["ddim", "euler", "heun"] = "ddim"
    target_ema_decay: float = 0.95
    loss: Literal["l2", "pseudo_huber"] = "l2"
    huber_c: float = 0.00054
    guidance_scale: float = 1.0
    guidance_range: tuple[float, float] | None = None
    grid: Literal["diffusers", "uniform"] = "diffusers"  # uniform: every step does work (diffusion.solver_grid)
    schedule: dict[str, float | str | int | bool] = {}


def teacher_step_pair(teacher: Denoiser, x0: Tensor, cond: Cond | None, t: Tensor, t_next: Tensor, solver: str,
                      guidance_scale: float, guidance_range: tuple[float, float] | None,
                      generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(x_t ~ q(x_t | x0), the teacher's one solver step from it to t_next with CFG): every CD variant's pair."""
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_t = teacher.path.add_noise(x0, eps, t)
    with torch.no_grad():
        w = teacher_guidance(guidance_scale, guidance_range, len(x0), generator, x0.device)
        x_next = solver_step(solver, x_t, t, t_next, teacher.denoise_fn(cond, w), teacher.path)
    return x_t, x_next


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, parameter by parameter."""
    for p_target, p_source in zip(target.parameters(), source.parameters()):
        p_target.lerp_(p_source.detach(), 1 - decay)


def teacher_guidance(scale: float, scale_range: tuple[float, float] | None, batch: int, generator: torch.Generator,
                     device: torch.device) -> float | Tensor:
    """The teacher's CFG scale: fixed, or per sample uniform in scale_range (LCM's w ~ U[w_min, w_max])."""
    if scale_range is None:
        return scale
    lo, hi = scale_range
    return lo + (hi - lo) * torch.rand(batch, generator=generator, device=device)


class EMATargetObjective(Objective):
    """Discrete-time CD's EMA target f_theta^- (Song et al. 2023, Alg. 2): a frozen copy of the student, moved
    towards it after every update, started at the student (a warm restart's too), saved with the objective.
    Also holds the frozen teacher both CD variants distil from."""

    def __init__(self, student: Denoiser, teacher: Denoiser, target_ema_decay: float):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.teacher.requires_grad_(False)
        self.target_ema_decay = target_ema_decay
        self.target = copy.deepcopy(student).requires_grad_(False)
        self.target.attach_prepared(None)

    @torch.no_grad()
    def after_update(self, phase: str) -> None:
        ema_update(self.target, self.student, self.target_ema_decay)

    def after_student_init(self, source_state: dict[str, Tensor]) -> None:
        self.target.load_state_dict(self.student.state_dict())  # a warm restart's target starts at its student

    def extra_state(self) -> dict[str, Tensor]:
        return {f"target.{k}": v for k, v in self.target.state_dict().items()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.target.load_state_dict({k.removeprefix("target."): v for k, v in state.items() if k.startswith("target.")})


class ConsistencyDistillation(EMATargetObjective):
    """CD / LCM: one teacher solver step between adjacent grid times, EMA target network."""

    divergence_hint = "lower the learning rate, raise target_ema_decay, or use loss: pseudo_huber"

    def __init__(self, student: Denoiser, teacher: Denoiser, *, num_timesteps: int = 50, solver: str = "ddim",
                 target_ema_decay: float = 0.95, loss: Literal["l2", "pseudo_huber"] = "l2", huber_c: float = 0.00054,
                 guidance_scale: float = 1.0, guidance_range: tuple[float, float] | None = None,
                 sigma_data: float = 0.5, timestep_scaling: float = 10.0, grid: str = "diffusers",
                 schedule_kwargs: dict | None = None):
        super().__init__(student, teacher, target_ema_decay)
        # the solver grid, decreasing to the boundary (VP ends at timestep 0 as LCM does)
        times = solver_grid(teacher.path, num_timesteps, grid, **(schedule_kwargs or {}))
        self.register_buffer("grid", times.clamp(min=max(teacher.path.t_min, 0.0)), persistent=False)
        self.boundary = BoundaryCondition(student, float(self.grid[-1]), sigma_data, timestep_scaling)
        self.solver, self.loss_kind, self.huber_c = solver, loss, huber_c
        self.guidance_scale, self.guidance_range = guidance_scale, guidance_range

    def trainable_networks(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def loss(self, phase: str, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        x0, cond, n = batch.x0, batch.cond, len(batch)
        index = torch.randint(0, len(self.grid) - 1, (n,), generator=generator, device=x0.device)
        t, t_prev = self.grid[index], self.grid[index + 1]
        x_t, x_prev = teacher_step_pair(self.teacher, x0, cond, t, t_prev, self.solver, self.guidance_scale,
                                        self.guidance_range, generator)
        with torch.no_grad():
            target = self.boundary(self.target, x_prev, t_prev, cond)
        pred = self.boundary(self.student, x_t, t, cond)
        loss = consistency_distance(pred.float(), target.float(), self.loss_kind, self.huber_c).mean()
        return loss, {"cd_loss": loss.detach()}

    def sampling_grid(self, num_steps: int) -> Tensor:
        """num_steps of the grid's times before the boundary, spaced as LCMScheduler.set_timesteps picks them from
        its training schedule (indices floor(i N / n)): the last one stays clear of the boundary."""
        num_times = len(self.grid) - 1
        if not 1 <= num_steps <= num_times:
            raise ValueError(f"num_steps must be in [1, num_timesteps={num_times}], got {num_steps}")
        return self.grid[torch.arange(num_steps, device=self.grid.device) * num_times // num_steps]

    def export_scheduler(self, steps: tuple[int, ...] = (1, 2, 4)):
        """The diffusers scheduler + exact timesteps/sigmas that reproduce `sample` (used by `fewstep export`):
        LCMScheduler (VP) or FlowMatchEulerDiscreteScheduler(stochastic_sampling) (flow) on sampling_grid."""
        from ..export.schedulers import default_export_scheduler

        return default_export_scheduler(self, steps, method="cd")

    @torch.no_grad()
    def sample(self, noise: Tensor, num_steps: int, cond: Cond | None, generator: torch.Generator) -> Tensor:
        """Multistep consistency sampling (Song et al. 2023, Alg. 1)."""
        return renoise_sample(lambda x, t: self.boundary(self.student, x, t, cond), noise,
                              self.sampling_grid(num_steps).to(noise.device), generator, self.student.path)
