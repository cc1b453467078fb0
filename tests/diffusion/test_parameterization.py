"""Prediction-type conversions: every pair on every path, against closed-form references."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from fewstep.diffusion import (PREDICTION_TYPES, EDMPath, FlowPath, TrigFlowPath, convert_prediction, from_x0_eps,
                               to_x0_eps)

from ._common import PATH_NAMES, SD_SCHEDULE, fd_derivative, get_path, interior_times


def _types_for(path):
    return [p for p in PREDICTION_TYPES if p != "trigflow" or isinstance(path, TrigFlowPath)]


def _sample(path, seed=0, shape=(24, 2, 3)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(*shape, generator=g, dtype=torch.float64)
    eps = torch.randn(*shape, generator=g, dtype=torch.float64)
    t = interior_times(path, shape[0], seed=seed)
    return x0, eps, t, path.add_noise(x0, eps, t)


def _velocity(x0, eps, t, path):
    """dx_t/dt for fixed (x0, eps): closed-form derivatives, finite differences inside a VP segment."""
    tt = t.reshape(-1, 1, 1)
    if isinstance(path, FlowPath):
        return eps - x0
    if isinstance(path, EDMPath):
        return eps
    if isinstance(path, TrigFlowPath):
        return -torch.sin(tt) * x0 + path.sigma_data * torch.cos(tt) * eps
    return fd_derivative(lambda u: path.add_noise(x0, eps, u), t, path)


def _reference(kind, x0, eps, t, x_t, path):
    """Each parameterisation from its definition, without the library's coefficient code."""
    a = path.alpha(t).reshape(-1, 1, 1)
    s = path.sigma(t).reshape(-1, 1, 1)
    if kind == "epsilon":
        return eps
    if kind == "sample":
        return x0
    if kind == "v_prediction":  # diffusers / Salimans & Ho: v = alpha eps - sigma x0
        return a * eps - s * x0
    if kind == "score":  # grad_x log q(x_t | x0) = -(x_t - a x0) / s^2
        return -(x_t - a * x0) / s**2
    velocity = _velocity(x0, eps, t, path)
    if kind == "flow_prediction":
        return velocity
    if kind == "trigflow":  # sCM: dx_t/dt = sigma_d * F
        return velocity / path.sigma_data
    raise AssertionError(kind)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_from_x0_eps_matches_definitions(name):
    path = get_path(name)
    x0, eps, t, x_t = _sample(path)
    for kind in _types_for(path):
        ref = _reference(kind, x0, eps, t, x_t, path)
        torch.testing.assert_close(from_x0_eps(x0, eps, kind, t, path), ref, rtol=1e-6, atol=1e-8, msg=kind)


@pytest.mark.parametrize("name,src", [(n, p) for n in PATH_NAMES for p in PREDICTION_TYPES
                                      if p != "trigflow" or n == "trigflow"])  # off-path trigflow: error test below
def test_round_trip_every_pair(name, src):
    path = get_path(name)
    x0, eps, t, x_t = _sample(path, seed=1)
    pred = _reference(src, x0, eps, t, x_t, path)
    rx0, reps = to_x0_eps(pred, src, x_t, t, path)
    torch.testing.assert_close(rx0, x0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(reps, eps, rtol=1e-6, atol=1e-7)
    for dst in _types_for(path):
        out = convert_prediction(pred, src, dst, x_t, t, path)
        torch.testing.assert_close(out, _reference(dst, x0, eps, t, x_t, path), rtol=1e-6, atol=1e-7,
                                   msg=f"{src}->{dst}")
        back = convert_prediction(out, dst, src, x_t, t, path)
        torch.testing.assert_close(back, pred, rtol=1e-9, atol=1e-9, msg=f"{src}->{dst}->{src}")


def test_vp_matches_diffusers_add_noise_and_velocity():
    path = get_path("vp_scaled_linear")
    sched = DDPMScheduler(**SD_SCHEDULE)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(8, 4, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 4, 3, 3, generator=g, dtype=torch.float64)
    steps = torch.tensor([0, 1, 10, 250, 500, 750, 998, 999])
    t = steps.double()
    x_t = path.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, sched.add_noise(x0, eps, steps), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(from_x0_eps(x0, eps, "v_prediction", t, path), sched.get_velocity(x0, eps, steps),
                               rtol=1e-6, atol=1e-6)


def test_flow_prediction_is_noise_minus_data_on_flow_path():
    """FlowMatchEulerDiscreteScheduler's convention: model output = eps - x0."""
    path = get_path("flow")
    x0, eps, t, x_t = _sample(path, seed=3)
    torch.testing.assert_close(from_x0_eps(x0, eps, "flow_prediction", t, path), eps - x0, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", ["vp_linear", "vp_scaled_linear", "flow", "edm"])
def test_trigflow_rejected_off_trigflow_path(name):
    path = get_path(name)
    x0, eps, t, x_t = _sample(path)
    for call in (lambda: to_x0_eps(eps, "trigflow", x_t, t, path),
                 lambda: from_x0_eps(x0, eps, "trigflow", t, path),
                 lambda: convert_prediction(eps, "epsilon", "trigflow", x_t, t, path),
                 lambda: convert_prediction(eps, "trigflow", "epsilon", x_t, t, path)):
        with pytest.raises(ValueError, match="TrigFlow"):
            call()


def test_unknown_prediction_type_raises():
    path = get_path("flow")
    x0, eps, t, x_t = _sample(path)
    with pytest.raises(ValueError, match="unknown prediction_type"):
        to_x0_eps(eps, "velocity", x_t, t, path)
    with pytest.raises(ValueError, match="unknown prediction_type"):
        from_x0_eps(x0, eps, "x0", t, path)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_float32_data_keeps_dtype(name):
    path = get_path(name)
    x0, eps, t, x_t = _sample(path, seed=4)
    for kind in _types_for(path):
        pred64 = from_x0_eps(x0, eps, kind, t, path)
        pred32 = from_x0_eps(x0.float(), eps.float(), kind, t, path)
        assert pred32.dtype == torch.float32
        torch.testing.assert_close(pred32.double(), pred64, rtol=1e-4, atol=1e-4)
        rx0, reps = to_x0_eps(pred32, kind, x_t.float(), t, path)
        assert rx0.dtype == reps.dtype == torch.float32
