"""Gaussian probability paths x_t = alpha(t) * x0 + sigma(t) * eps.

Every teacher declares one path; objectives only ever talk to this interface, so
"is this SDXL or Flux" is answered once, here. Time `t` is in the path's own units
(VP: the diffusers training timestep in [0, T-1]; rectified flow: sigma in [0, 1];
EDM: sigma; TrigFlow: angle in [0, pi/2]). `t` is a tensor broadcast over the batch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Mapping

import torch
from torch import Tensor


def _float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if torch.is_tensor(t) and t.is_floating_point() else torch.float64


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample (B,) tensor so it broadcasts against x (B, ...), in x's dtype.

    Times and schedule coefficients are kept in float64; they meet the data in its own dtype.
    """
    t = torch.as_tensor(t, device=x.device)
    if x.is_floating_point():
        t = t.to(x.dtype)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


class GaussianPath(ABC):
    """x_t = alpha(t) x0 + sigma(t) eps with eps ~ N(0, I); t_min is the data end."""

    name: str = "abstract"
    t_min: float
    t_max: float

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Time derivatives (d alpha/dt, d sigma/dt)."""

    @abstractmethod
    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of log_snr(t) = 2 log(alpha/sigma)."""

    def log_snr(self, t: Tensor) -> Tensor:
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def model_timestep(self, t: Tensor) -> Tensor:
        """The `timestep` the diffusers network was trained with at path time t."""
        return t

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return expand_like(self.alpha(t), x0) * x0 + expand_like(self.sigma(t), x0) * eps

    def velocity(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """dx_t/dt along the path for fixed (x0, eps)."""
        da, ds = self.d_alpha_sigma(t)
        return expand_like(da, x0) * x0 + expand_like(ds, x0) * eps

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


class FlowPath(GaussianPath):
    """Rectified flow / flow matching (SD3, FLUX, SANA, Wan): x_t = (1-t) x0 + t eps.

    The network's timestep is t * num_train_timesteps as in FlowMatchEulerDiscreteScheduler.
    Shifted schedules only change which t are visited (see timesteps.py), not the path.
    """

    name = "flow"
    t_min = 0.0
    t_max = 1.0

    def __init__(self, num_train_timesteps: int = 1000):
        self.num_train_timesteps = num_train_timesteps

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return -torch.ones_like(t), torch.ones_like(t)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return torch.sigmoid(-log_snr / 2)  # alpha/sigma = (1-t)/t = exp(lambda/2)

    def model_timestep(self, t: Tensor) -> Tensor:
        return t * self.num_train_timesteps

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "num_train_timesteps": self.num_train_timesteps}


class EDMPath(GaussianPath):
    """Variance exploding, EDM (Karras et al. 2022): x_t = x0 + t eps, t = sigma."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.t_min, self.t_max = sigma_min, sigma_max

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(t), torch.ones_like(t)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return torch.exp(-log_snr / 2)

    def model_timestep(self, t: Tensor) -> Tensor:
        return torch.log(t) / 4  # EDM's c_noise

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_min": self.t_min, "sigma_max": self.t_max}


class TrigFlowPath(GaussianPath):
    """TrigFlow (sCM, Lu & Song 2024, Eq. 2): x_t = cos(t) x0 + sin(t) z, z ~ N(0, sigma_d^2 I)."""

    name = "trigflow"
    t_min = 0.0
    t_max = math.pi / 2

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_data * torch.sin(t)

    def d_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return -torch.sin(t), self.sigma_data * torch.cos(t)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # tan(t) = sigma / (alpha * sigma_d) = exp(-lambda/2) / sigma_d
        return torch.atan(torch.exp(-log_snr / 2) / self.sigma_data)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_data": self.sigma_data}


class VPPath(GaussianPath):
    """Discrete DDPM variance-preserving path (SD 1.5, SDXL, DiT, UNet2DModel teachers).

    alphas_cumprod come from diffusers' own DDPMScheduler for the given config, so every
    beta schedule diffusers knows (linear, scaled_linear, squaredcos_cap_v2, zero-SNR
    rescaling) is matched exactly. Between integer timesteps log(alphas_cumprod) is
    interpolated linearly; t = -1 is the clean end (alpha = 1), as DDIM's set_alpha_to_one.
    """

    name = "vp"

    def __init__(self, alphas_cumprod: Tensor, scheduler_config: Mapping[str, Any] | None = None):
        acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self._log_acp = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(acp)])  # index 0 = t=-1
        self.num_train_timesteps = len(acp)
        self.scheduler_config = dict(scheduler_config or {})
        self.t_min = -1.0
        self.t_max = float(len(acp) - 1)

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any] | None = None, **overrides: Any) -> "VPPath":
        import inspect

        from diffusers import DDPMScheduler

        cfg = {k: v for k, v in dict(config or {}).items() if not k.startswith("_")}
        cfg.update(overrides)
        allowed = inspect.signature(DDPMScheduler.__init__).parameters  # __init__ is wrapped by register_to_config
        sched = DDPMScheduler(**{k: v for k, v in cfg.items() if k in allowed})
        return cls(sched.alphas_cumprod, dict(sched.config))

    def _interp(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pos = (torch.as_tensor(t, dtype=torch.float64) + 1).clamp(0, self.num_train_timesteps)
        lo = pos.floor().clamp(max=self.num_train_timesteps - 1)
        table = self._log_acp.to(pos.device)
        left, right = table[lo.long()], table[(lo + 1).long()]
        return left, right, pos - lo

    def _log_alpha_sq(self, t: Tensor) -> Tensor:
        left, right, frac = self._interp(t)
        # frac == 0 is the knot itself, also when the next knot is log(0) = -inf (zero terminal SNR)
        return torch.where(frac > 0, left + frac * (right - left), left).to(_float_dtype(t))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_alpha_sq(t) / 2)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self._log_alpha_sq(t)))

    def d_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        left, right, _ = self._interp(t)
        slope = (right - left).to(_float_dtype(t))  # d log(alpha^2) / dt
        a, s = self.alpha(t), self.sigma(t)
        return a * slope / 2, -(a * a) * slope / (2 * s)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # log(alpha^2) = -softplus(-lambda); monotone decreasing table -> invert piecewise-linearly.
        target = -torch.nn.functional.softplus(-torch.as_tensor(log_snr, dtype=torch.float64))
        table = self._log_acp.to(target.device)
        descending = -table
        idx = torch.searchsorted(descending, -target).clamp(1, len(table) - 1)
        left, right = table[idx - 1], table[idx]
        frac = ((target - left) / (right - left)).nan_to_num(1.0).clamp(0, 1)  # -inf/-inf: zero terminal SNR
        return (idx - 2 + frac).to(_float_dtype(log_snr))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "scheduler_config": self.scheduler_config}


def path_from_config(cfg: Mapping[str, Any]) -> GaussianPath:
    """Build a path from its config() dict (round trip used by checkpoints and exports)."""
    name = cfg["name"]
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    if name == "flow":
        return FlowPath(**kwargs)
    if name == "edm":
        return EDMPath(**kwargs)
    if name == "trigflow":
        return TrigFlowPath(**kwargs)
    if name == "vp":
        return VPPath.from_scheduler_config(kwargs.get("scheduler_config"))
    raise ValueError(f"unknown path {name!r}; expected one of: flow, edm, trigflow, vp")


def convert_state(x_t: Tensor, t: Tensor, src: GaussianPath, dst: GaussianPath) -> tuple[Tensor, Tensor]:
    """Map a noisy sample on `src` at time t to the equal-SNR point on `dst`.

    Both paths share x0 and eps, so x_dst = x_src * alpha_dst / alpha_src at t_dst where
    the signal-to-noise ratios agree (e.g. any path -> TrigFlow for sCM/rCM, VP -> EDM sigmas
    for EulerDiscreteScheduler).
    """
    t_dst = dst.t_from_log_snr(src.log_snr(t))
    scale = dst.alpha(t_dst) / src.alpha(t)
    return x_t * expand_like(scale, x_t), t_dst
