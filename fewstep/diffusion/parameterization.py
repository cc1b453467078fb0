"""Conversions between network parameterisations on any Gaussian path.

Every prediction is a linear function of (x0, eps) given x_t, so each converts through
that pair:  epsilon, sample (x0), v_prediction (a*eps - s*x0, diffusers' definition),
flow_prediction (dx_t/dt along the path, for rectified flow eps - x0), score (-eps/s)
and trigflow (the sCM network output F = (dx_t/dt) / sigma_d on the TrigFlow path).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .paths import GaussianPath, TrigFlowPath, expand_like

PredictionType = Literal["epsilon", "sample", "v_prediction", "flow_prediction", "score", "trigflow"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction", "flow_prediction", "score", "trigflow")


def _coeffs(path: GaussianPath, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    da, ds = path.d_alpha_sigma(t)
    return (expand_like(path.alpha(t), x), expand_like(path.sigma(t), x), expand_like(da, x), expand_like(ds, x))


def to_x0_eps(pred: Tensor, prediction_type: str, x_t: Tensor, t: Tensor, path: GaussianPath) -> tuple[Tensor, Tensor]:
    """Recover (x0, eps) from a prediction in any parameterisation."""
    a, s, da, ds = _coeffs(path, t, x_t)
    if prediction_type == "epsilon":
        return (x_t - s * pred) / a, pred
    if prediction_type == "sample":
        return pred, (x_t - a * pred) / s
    if prediction_type == "score":
        eps = -s * pred
        return (x_t - s * eps) / a, eps
    if prediction_type == "v_prediction":
        norm = a * a + s * s
        return (a * x_t - s * pred) / norm, (s * x_t + a * pred) / norm
    if prediction_type in ("flow_prediction", "trigflow"):
        if prediction_type == "trigflow":
            _require_trigflow(path)
            pred = pred * path.sigma_data  # type: ignore[attr-defined]
        det = a * ds - s * da  # solve [a s; da ds] [x0; eps] = [x_t; u]
        return (ds * x_t - s * pred) / det, (a * pred - da * x_t) / det
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def from_x0_eps(x0: Tensor, eps: Tensor, prediction_type: str, t: Tensor, path: GaussianPath) -> Tensor:
    """Express (x0, eps) in the requested parameterisation."""
    a, s, da, ds = _coeffs(path, t, x0)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "score":
        return -eps / s
    if prediction_type == "v_prediction":
        return a * eps - s * x0
    if prediction_type == "flow_prediction":
        return da * x0 + ds * eps
    if prediction_type == "trigflow":
        _require_trigflow(path)
        return (da * x0 + ds * eps) / path.sigma_data  # type: ignore[attr-defined]
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def convert_prediction(pred: Tensor, src_type: str, dst_type: str, x_t: Tensor, t: Tensor,
                       path: GaussianPath) -> Tensor:
    if src_type == dst_type:
        return pred
    x0, eps = to_x0_eps(pred, src_type, x_t, t, path)
    return from_x0_eps(x0, eps, dst_type, t, path)


def _require_trigflow(path: GaussianPath) -> None:
    if not isinstance(path, TrigFlowPath):
        raise ValueError("prediction_type 'trigflow' is defined on the TrigFlow path only; "
                         "convert the state with convert_state first")


def lcm_boundary_scalings(path: GaussianPath, t: Tensor, boundary_time: float, sigma_data: float = 0.5,
                          timestep_scaling: float = 10.0) -> tuple[Tensor, Tensor]:
    """LCM's skip scalings (diffusers LCMScheduler.get_scalings_for_boundary_condition_discrete):
    c_skip = sd^2 / ((k tau)^2 + sd^2), c_out = k tau / sqrt((k tau)^2 + sd^2), tau the model timestep measured
    from the boundary time; c_skip = 1, c_out = 0 exactly at the boundary."""
    t_b = torch.as_tensor(boundary_time, dtype=t.dtype, device=t.device)
    tau = (path.model_timestep(t) - path.model_timestep(t_b)) * timestep_scaling
    c_skip = sigma_data ** 2 / (tau ** 2 + sigma_data ** 2)
    c_out = tau / (tau ** 2 + sigma_data ** 2).sqrt()
    return c_skip, c_out


def apply_lcm_boundary(x_t: Tensor, x0: Tensor, t: Tensor, path: GaussianPath, boundary_time: float,
                       sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> Tensor:
    """The LCM boundary-conditioned prediction c_skip x_t + c_out x0 (exactly x_t at the boundary time)."""
    c_skip, c_out = lcm_boundary_scalings(path, t, boundary_time, sigma_data, timestep_scaling)
    return expand_like(c_skip, x_t).to(x_t) * x_t + expand_like(c_out, x_t).to(x_t) * x0
