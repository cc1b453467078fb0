"""Which times a sampler visits and which a trainer draws.

Sampling grids come from diffusers' own schedulers so our teacher samplers visit exactly
the timesteps/sigmas a diffusers pipeline would.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .paths import EDMPath, FlowPath, GaussianPath, TrigFlowPath, VPPath


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """SD3's resolution shift (FlowMatchEulerDiscreteScheduler, shift=3.0 for SD3)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def dynamic_shift_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                     base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent mu, linear in the number of image tokens."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


def exponential_time_shift(sigma: Tensor, mu: float) -> Tensor:
    return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))


def sampling_times(path: GaussianPath, num_steps: int, **scheduler_kwargs: Any) -> Tensor:
    """num_steps + 1 decreasing path times, ending at the clean end, as diffusers samples them.

    VP: DDIMScheduler timesteps (pass timestep_spacing='trailing'/'leading'/'linspace'),
    final time -1 (alpha = 1) when set_alpha_to_one else 0. Flow: FlowMatchEulerDiscreteScheduler
    sigmas (pass shift=..., or use_dynamic_shifting=True with mu=...). EDM: Karras rho=7.
    TrigFlow: uniform in angle from pi/2.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if isinstance(path, VPPath):
        import inspect

        from diffusers import DDIMScheduler

        allowed = inspect.signature(DDIMScheduler.__init__).parameters  # __init__ is wrapped by register_to_config
        cfg = {k: v for k, v in path.scheduler_config.items() if k in allowed}
        cfg.update({k: v for k, v in scheduler_kwargs.items()})
        sched = DDIMScheduler(**cfg)
        sched.set_timesteps(num_steps)
        final = -1.0 if sched.config.set_alpha_to_one else 0.0
        return torch.cat([sched.timesteps.double(), torch.tensor([final], dtype=torch.float64)])
    if isinstance(path, FlowPath):
        from diffusers import FlowMatchEulerDiscreteScheduler

        if path.num_train_timesteps < 2:
            raise ValueError("diffusers' flow grid with num_train_timesteps 1 (a network fed the time itself) visits "
                             "only t = 1: use the even grid (objective.grid: uniform)")
        mu = scheduler_kwargs.pop("mu", None)
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=path.num_train_timesteps, **scheduler_kwargs)
        sched.set_timesteps(num_steps, mu=mu)
        return sched.sigmas.double()
    if isinstance(path, EDMPath):
        rho = scheduler_kwargs.get("rho", 7.0)
        ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
        lo, hi = path.t_min ** (1 / rho), path.t_max ** (1 / rho)
        sig = (hi + ramp * (lo - hi)) ** rho
        return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    if isinstance(path, TrigFlowPath):
        return torch.linspace(path.t_max, 0.0, num_steps + 1, dtype=torch.float64)
    raise TypeError(f"no sampling grid for path {type(path).__name__}")


def solver_grid(path: GaussianPath, num_steps: int, grid: str = "diffusers", **scheduler_kwargs: Any) -> Tensor:
    """num_steps + 1 decreasing times for a teacher solver: diffusers' grid (`sampling_times`), or an even grid in
    path time (`grid="uniform"`: at a few steps diffusers' flow grid spends a whole step between sigma 0.001 and 0)."""
    if grid == "uniform":
        return torch.linspace(path.t_max, max(path.t_min, 0.0), num_steps + 1, dtype=torch.float64)
    if grid == "diffusers":
        return sampling_times(path, num_steps, **scheduler_kwargs)
    raise ValueError(f"grid must be 'diffusers' or 'uniform', got {grid!r}")


def sample_training_times(path: GaussianPath, n: int, generator: torch.Generator | None = None,
                          distribution: str = "uniform", *, mean: float = 0.0, std: float = 1.0,
                          shift: float = 1.0, device: torch.device | str = "cpu") -> Tensor:
    """Draw training times: 'uniform' over the path, 'logit_normal' (SD3 / rectified flow),
    'lognormal' over sigma/alpha (EDM, and sCM's proposal over tan(t) * sigma_d)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    lo, hi = _trainable_range(path)
    if distribution == "uniform":
        t = lo + (hi - lo) * u
        return shift_sigma(t, shift) if isinstance(path, FlowPath) and shift != 1.0 else t
    z = torch.randn(n, generator=generator, dtype=torch.float64, device=device) * std + mean
    if distribution == "logit_normal":
        if not isinstance(path, FlowPath):
            raise ValueError("logit_normal time sampling is defined for the flow path")
        return shift_sigma(torch.sigmoid(z), shift).clamp(lo, hi)
    if distribution == "lognormal":
        noise_to_signal = torch.exp(z)  # sigma/alpha
        return path.t_from_log_snr(-2 * torch.log(noise_to_signal)).clamp(lo, hi)
    raise ValueError(f"unknown time distribution {distribution!r}; expected uniform, logit_normal or lognormal")


def _trainable_range(path: GaussianPath) -> tuple[float, float]:
    """Times at which a network is evaluated in training (never exactly at sigma = 0)."""
    if isinstance(path, VPPath):
        return 0.0, path.t_max
    if isinstance(path, FlowPath):
        # diffusers' flow schedulers stop at sigma 1 / num_train_timesteps; a network fed the time itself
        # (num_train_timesteps 1, scripts/retime_teacher.py) keeps the usual 1000-step floor, not t = 1
        return 1.0 / max(path.num_train_timesteps, 1000), 1.0
    if isinstance(path, TrigFlowPath):
        return 1e-4, path.t_max
    return path.t_min, path.t_max
