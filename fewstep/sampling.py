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
    """Deterministic teacher sampling (Euler / DDIM / Heun) on the diffusers grid of `num_steps`, or on an
    even grid in path time (`grid="uniform"`: fairer at 1-4 steps, where diffusers' flow grid spends
    its last step between sigma 0.001 and 0)."""
    times = solver_grid(denoiser.path, num_steps, grid, **schedule_kwargs)
    times = times.to(noise.device)
    x = initial_state(noise, denoiser.path, times[0])
    denoise = denoiser.denoise_fn(cond, guidance_scale)
    for t, t_next in zip(times[:-1], times[1:]):
        x = solver_step(solver, x, time_like(t, len(x), x.device), time_like(t_next, len(x), x.device), denoise, denoiser.path)
    return x
