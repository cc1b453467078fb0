"""Multistep / phased consistency distillation: PCM (Wang et al. 2024, "Phased Consistency Models", Sec. 3, the
phased consistency function in DDIM form), Multistep CMs (Heek et al. 2024), MLCM (Xie et al. 2024) and Hyper-SD's
trajectory-segmented consistency distillation, TSCD (Ren et al. 2024: segments shrinking in stages).

The teacher's solver grid t_0 > ... > t_N is cut into K segments at edges s_0 = t_0 > s_1 > ... > s_K = t_N.
On segment k the consistency function maps to the segment's lower edge s_{k+1} with a DDIM jump that uses
the student's (x0, eps) prediction,

    f(x_t, t) = alpha(s) x0_theta + sigma(s) eps_theta   for s < t,     f(x_s, s) = x_s   (boundary),

and is trained like CD: f_theta(x_{t_n}, t_n) against the EMA target f_theta^-(x_{t_{n+1}}, t_{n+1}), one teacher
step apart inside one segment. K-step sampling visits exactly the edges; fewer steps use a subset of them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..diffusion import ddim_step, solver_grid
from ..models.base import Cond, Denoiser
from .base import Batch, Objective, consistency_sample
from .consistency import ConsistencyTeacherConfig, EMATargetObjective, consistency_distance, teacher_step_pair


def phased_consistency(net: Denoiser, x_t: Tensor, t: Tensor, edge: Tensor, cond: Cond | None) -> Tensor:
    """PCM's f^{edge}(x_t, t): the DDIM jump from t to the segment edge; exactly x_t where t is the edge."""
    x0, eps = net.x0_eps(x_t, t, cond)
    jump = ddim_step(x0, eps, edge, net.path)
    at_edge = (t == edge).reshape(-1, *([1] * (x_t.ndim - 1)))
    return torch.where(at_edge, x_t, jump)


def segment_edges(num_timesteps: int, segments: int) -> Tensor:
    """Indices into the (num_timesteps + 1)-point grid of the K + 1 segment edges, evenly spread."""
    if not 1 <= segments <= num_timesteps:
        raise ValueError(f"segments must be in [1, num_timesteps={num_timesteps}], got {segments}")
    return torch.linspace(0, num_timesteps, segments + 1, dtype=torch.float64).round().long()


class MultistepConsistencyDistillation(EMATargetObjective):
    """Phased / multistep CD with an EMA target; `segments` may shrink in stages (Hyper-SD's 8 -> 4 -> 2 -> 1)."""

    divergence_hint = "lower the learning rate, raise target_ema_decay, or use loss: pseudo_huber"

    def __init__(self, student: Denoiser, teacher: Denoiser, *, num_timesteps: int = 50, segments: int | list[int] = 4,
                 stage_steps: list[int] | None = None, solver: str = "ddim", target_ema_decay: float = 0.95,
                 loss: Literal["l2", "pseudo_huber"] = "l2", huber_c: float = 0.00054, guidance_scale: float = 1.0,
                 guidance_range: tuple[float, float] | None = None, gamma: float = 0.0, grid: str = "diffusers",
                 schedule_kwargs: dict | None = None):
        super().__init__(student, teacher, target_ema_decay)
        self.segment_stages = [segments] if isinstance(segments, int) else list(segments)
        self.stage_steps = list(stage_steps or [])
        if len(self.stage_steps) != len(self.segment_stages) - 1 or self.stage_steps != sorted(self.stage_steps):
            raise ValueError(f"stage_steps must be {len(self.segment_stages) - 1} increasing update counts, one per "
                             f"change of segments {self.segment_stages}; got {self.stage_steps}")
        for k in self.segment_stages:
            segment_edges(num_timesteps, k)  # validates
        self.register_buffer("grid", solver_grid(teacher.path, num_timesteps, grid, **(schedule_kwargs or {})),
                             persistent=False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # saved in extra_state
        self.num_timesteps, self.solver = num_timesteps, solver
        self.loss_kind, self.huber_c, self.gamma = loss, huber_c, gamma
        self.guidance_scale, self.guidance_range = guidance_scale, guidance_range

    def trainable_networks(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    @property
    def segments(self) -> int:
        """Segments of the current stage (the last stage's count once training is past every stage_steps)."""
        return self.segment_stages[sum(int(self.updates) >= s for s in self.stage_steps)]

    def edges(self, segments: int | None = None) -> Tensor:
        return self.grid[segment_edges(self.num_timesteps, segments or self.segments).to(self.grid.device)]

    def lower_edge_index(self, index: Tensor) -> Tensor:
        """Grid index of the lower edge of the segment holding grid index `index` (< num_timesteps)."""
        edge_index = segment_edges(self.num_timesteps, self.segments).to(index.device)
        return edge_index[torch.searchsorted(edge_index, index, right=True)]

    def loss(self, phase: str, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        x0, cond, n = batch.x0, batch.cond, len(batch)
        index = torch.randint(0, self.num_timesteps, (n,), generator=generator, device=x0.device)
        t, t_next, edge = self.grid[index], self.grid[index + 1], self.grid[self.lower_edge_index(index)]
        x_t, x_next = teacher_step_pair(self.teacher, x0, cond, t, t_next, self.solver, self.guidance_scale,
                                        self.guidance_range, generator)
        with torch.no_grad():
            target = phased_consistency(self.target, x_next, t_next, edge, cond)
        pred = phased_consistency(self.student, x_t, t, edge, cond)
        loss = consistency_distance(pred.float(), target.float(), self.loss_kind, self.huber_c).mean()
        return loss, {"mcm_loss": loss.detach(), "mcm/segments": torch.tensor(float(self.segments))}

    @torch.no_grad()
    def after_update(self, phase: str) -> None:
        super().after_update(phase)
        self.updates += 1

    def extra_state(self) -> dict[str, Tensor]:
        return {"updates": self.updates.clone(), **super().extra_state()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.updates.copy_(state["updates"])
        super().load_extra_state(state)

    def sampling_times(self, num_steps: int) -> Tensor:
        """num_steps + 1 times: a subset of the segment edges when num_steps <= K (all of them at K), otherwise
        times picked evenly from the training grid."""
        if num_steps <= self.segments:
            pick = torch.linspace(0, self.segments, num_steps + 1, dtype=torch.float64).round().long()
            return self.edges()[pick.to(self.grid.device)]
        pick = torch.linspace(0, self.num_timesteps, num_steps + 1, dtype=torch.float64).round().long()
        return self.grid[pick.to(self.grid.device)]

    def export_scheduler(self, steps: list[int]):
        """The sampling edges without the clean end, at this sampler's gamma: FlowMatchEulerDiscreteScheduler (flow,
        gamma 0 or 1), LCMScheduler (VP, gamma 1), else fewstep's FewStepConsistencyScheduler (TCD's 0 < gamma < 1,
        VP edge-to-edge DDIM jumps)."""
        from ..export.schedulers import default_export_scheduler

        return default_export_scheduler(self, steps, grid_fn=lambda n: self.sampling_times(n)[:n], gamma=self.gamma)

    @torch.no_grad()
    def sample(self, noise: Tensor, num_steps: int, cond: Cond | None, generator: torch.Generator) -> Tensor:
        """PCM sampling: predict (x0, eps), jump to the next edge (gamma = 0, deterministic), or take TCD's
        stochastic step (gamma > 0: DDIM to (1 - gamma) of the way, re-noise to the edge). Returns the last x0."""
        times = self.sampling_times(num_steps).to(noise.device)[:num_steps]
        return consistency_sample(lambda x, t: self.student.x0_eps(x, t, cond), noise, times, self.gamma, generator,
                                  self.student.path)


class MCMConfig(ConsistencyTeacherConfig):
    """Multistep / phased consistency distillation (fewstep.objectives.multistep_cm)."""

    name: Literal["mcm"] = "mcm"
    segments: int | list[int] = 4  # a list shrinks in stages at stage_steps (Hyper-SD TSCD: [8, 4, 2, 1])
    stage_steps: list[int] = []
    gamma: float = 0.0  # sampler: 0 deterministic edge-to-edge jumps, > 0 TCD's stochastic step


def _build_mcm(cfg: MCMConfig, student: Denoiser, teacher: Denoiser) -> Objective:
    return MultistepConsistencyDistillation(
        student, teacher, num_timesteps=cfg.num_timesteps, segments=cfg.segments, stage_steps=cfg.stage_steps,
        solver=cfg.solver, target_ema_decay=cfg.target_ema_decay, loss=cfg.loss, huber_c=cfg.huber_c,
        guidance_scale=cfg.guidance_scale, guidance_range=cfg.guidance_range, gamma=cfg.gamma, grid=cfg.grid,
        schedule_kwargs=dict(cfg.schedule))


def _register() -> None:
    from .registry import register

    register("mcm", MCMConfig, _build_mcm)


_register()
