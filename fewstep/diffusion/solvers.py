"""Deterministic ODE steps and stochastic re-noise steps on any Gaussian path.

A "denoise" callable maps (x_t, t) -> (x0_hat, eps_hat); every solver works on that
pair, so the same code serves eps-, v-, x0- and flow-parameterised teachers.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .paths import GaussianPath, expand_like

DenoiseFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def ddim_step(x0: Tensor, eps: Tensor, t_next: Tensor, path: GaussianPath) -> Tensor:
    """DDIM (eta=0, Song et al. 2021 Eq. 12): keep the predicted (x0, eps), move to t_next.

    On the rectified-flow path this is exactly the Euler step of FlowMatchEulerDiscreteScheduler.
    """
    return path.add_noise(x0, eps, t_next)


def pf_ode_velocity(x0: Tensor, eps: Tensor, t: Tensor, path: GaussianPath) -> Tensor:
    """Probability-flow ODE drift dx/dt = alpha'(t) E[x0|x_t] + sigma'(t) E[eps|x_t]."""
    return path.velocity(x0, eps, t)


def euler_step(x_t: Tensor, t: Tensor, t_next: Tensor, velocity: Tensor) -> Tensor:
    return x_t + expand_like(t_next - t, x_t) * velocity


def heun_step(x_t: Tensor, t: Tensor, t_next: Tensor, denoise: DenoiseFn, path: GaussianPath) -> Tensor:
    """Heun's 2nd-order step (EDM Alg. 1); Euler for the samples whose t_next is the clean end (per sample: a
    training batch mixes last and inner steps, and a denoiser may be undefined at sigma 0)."""
    x0, eps = denoise(x_t, t)
    v1 = pf_ode_velocity(x0, eps, t, path)
    x_euler = euler_step(x_t, t, t_next, v1)
    clean = path.sigma(t_next) <= 0
    if bool(clean.all()):
        return x_euler
    t_eval = torch.where(clean, t, t_next)  # clean samples are evaluated somewhere harmless, their result unused
    clean_x = expand_like(clean, x_t) > 0
    x0_2, eps_2 = denoise(torch.where(clean_x, x_t, x_euler), t_eval)
    v2 = torch.where(clean_x, v1, pf_ode_velocity(x0_2, eps_2, t_eval, path))
    return euler_step(x_t, t, t_next, (v1 + v2) / 2)


def solver_step(solver: str, x_t: Tensor, t: Tensor, t_next: Tensor, denoise: DenoiseFn, path: GaussianPath) -> Tensor:
    """One teacher ODE step by name: 'ddim', 'euler' or 'heun'."""
    if solver == "heun":
        return heun_step(x_t, t, t_next, denoise, path)
    x0, eps = denoise(x_t, t)
    if solver == "ddim":
        return ddim_step(x0, eps, t_next, path)
    if solver == "euler":
        return euler_step(x_t, t, t_next, pf_ode_velocity(x0, eps, t, path))
    raise ValueError(f"unknown solver {solver!r}; expected one of: ddim, euler, heun")


def forward_noise(x_s: Tensor, s: Tensor, t: Tensor, noise: Tensor, path: GaussianPath) -> Tensor:
    """Sample q(x_t | x_s) for t >= s: x_t = (a_t/a_s) x_s + sqrt(s_t^2 - (a_t/a_s)^2 s_s^2) noise."""
    ratio = path.alpha(t) / path.alpha(s)
    var = (path.sigma(t) ** 2 - (ratio * path.sigma(s)) ** 2).clamp_min(0)
    return expand_like(ratio, x_s) * x_s + expand_like(var.sqrt(), x_s) * noise


def renoise_step(x0: Tensor, t_next: Tensor, noise: Tensor, path: GaussianPath) -> Tensor:
    """Multistep consistency / DMD sampling: jump to clean x0, then re-noise to t_next."""
    return path.add_noise(x0, noise, t_next)


def tcd_step(x0: Tensor, eps: Tensor, t_next: Tensor, gamma: float, noise: Tensor, path: GaussianPath,
             time_axis: GaussianPath | None = None) -> Tensor:
    """TCD's strategic stochastic step (Zheng et al. 2024, Eq. 9): DDIM to s = (1-gamma) t_next, re-noise to t_next.

    gamma = 0 is deterministic DDIM; gamma = 1 is the full re-noise of multistep consistency sampling.
    s is (1 - gamma) of the way from t_min to t_next on `time_axis`'s time (default: the path's own), mapped
    to `path` at equal SNR: a sampler defined on TrigFlow's angle runs exactly on a native path this way.
    """
    if gamma == 0:  # exactly DDIM: s = t_next computed in floats would leave sqrt(rounding) ~ 1e-7 of noise
        return ddim_step(x0, eps, t_next, path)
    axis = time_axis or path
    u_next = t_next if axis is path else axis.t_from_log_snr(path.log_snr(t_next))
    u_min = torch.as_tensor(axis.t_min, dtype=u_next.dtype, device=u_next.device)
    u_s = u_min + (1 - gamma) * (u_next - u_min)
    s = u_s if axis is path else path.t_from_log_snr(axis.log_snr(u_s))
    x_s = ddim_step(x0, eps, s, path)
    return forward_noise(x_s, s, t_next, noise, path)
