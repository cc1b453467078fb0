"""Teacher samplers (the baselines students are measured against)."""

from __future__ import annotations

import torch
from torch import Tensor

from .diffusion import solver_grid, solver_step
from .models.base import Cond, Denoiser
from .objectives.base import initial_state, time_like


@torch.no_grad()
def sample_ode(denoiser: Denoiser, noise: Tensor, num_steps: int, cond: Cond | None = None,
               guidance_scale: float = 1.0, solver: str = "euler", grid: str = "diffusers",
               **schedule_kwargs: object) -> Tensor:
    """Deterministic teacher sampling (Euler / DDIM / Heun) on `diffusion.solver_grid`'s grid of `num_steps`
    (diffusers' own, or `grid="uniform"`: even in path time, fairer at 1-4 steps)."""
    times = solver_grid(denoiser.path, num_steps, grid, **schedule_kwargs).to(noise.device)
    x = initial_state(noise, denoiser.path, times[0])
    denoise = denoiser.denoise_fn(cond, guidance_scale)
    for t, t_next in zip(times[:-1], times[1:]):
        x = solver_step(solver, x, time_like(t, len(x), x.device), time_like(t_next, len(x), x.device), denoise,
                        denoiser.path)
    return x
