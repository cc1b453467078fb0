"""Shared fixtures-as-functions for the diffusion math tests (float64 throughout)."""

from __future__ import annotations

import math

import torch

from fewstep.diffusion import EDMPath, FlowPath, GaussianPath, TrigFlowPath, VPPath

# Stable Diffusion 1.x/2.x/XL training schedule.
SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}

_CACHE: dict[str, GaussianPath] = {}
PATH_NAMES = ("vp_linear", "vp_scaled_linear", "flow", "edm", "trigflow")


def get_path(name: str) -> GaussianPath:
    if name not in _CACHE:
        _CACHE[name] = {
            "vp_linear": lambda: VPPath.from_scheduler_config(),
            "vp_scaled_linear": lambda: VPPath.from_scheduler_config(SD_SCHEDULE),
            "flow": lambda: FlowPath(),
            "edm": lambda: EDMPath(),
            "trigflow": lambda: TrigFlowPath(sigma_data=0.5),
        }[name]()
    return _CACHE[name]


def interior_times(path: GaussianPath, n: int, seed: int = 0) -> torch.Tensor:
    """Times strictly inside the path (alpha > 0, sigma > 0), away from VP integer knots."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    if isinstance(path, VPPath):
        k = torch.randint(0, int(path.t_max), (n,), generator=g).double()
        return k + 0.1 + 0.8 * u  # strictly between knots k and k+1
    if isinstance(path, FlowPath):
        return 0.02 + 0.96 * u
    if isinstance(path, EDMPath):
        return torch.exp(math.log(0.01) + u * (math.log(50.0) - math.log(0.01)))
    if isinstance(path, TrigFlowPath):
        return 0.02 + (math.pi / 2 - 0.04) * u
    raise TypeError(path)


def fd_derivative(fn, t: torch.Tensor, path: GaussianPath) -> torch.Tensor:
    """Central finite difference of fn(t); step small relative to the scale of t (VP: inside one segment)."""
    h = 1e-4 if isinstance(path, VPPath) else 1e-6
    return (fn(t + h) - fn(t - h)) / (2 * h)
