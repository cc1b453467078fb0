"""Gaussian paths: VP tables vs diffusers, derivatives vs finite differences, log-SNR inverses, convert_state."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from fewstep.diffusion import EDMPath, FlowPath, TrigFlowPath, VPPath, convert_state, expand_like, path_from_config

from ._common import PATH_NAMES, SD_SCHEDULE, fd_derivative, get_path, interior_times

SCHEDULES = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "scaled_linear": SD_SCHEDULE,
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
}


def _betas_float64(cfg: dict, T: int) -> np.ndarray:
    """Independent float64 re-derivation of the DDPM beta schedules (Ho et al.; Nichol & Dhariwal)."""
    kind = cfg["beta_schedule"]
    if kind == "linear":
        return np.linspace(cfg["beta_start"], cfg["beta_end"], T)
    if kind == "scaled_linear":
        return np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, T) ** 2
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_vp_alphas_equal_diffusers_alphas_cumprod(schedule):
    cfg = SCHEDULES[schedule]
    path = VPPath.from_scheduler_config(cfg)
    acp = DDPMScheduler(**cfg).alphas_cumprod.double()
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(path.alpha(t), acp.sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(path.sigma(t), (1 - acp).sqrt(), rtol=1e-9, atol=0)
    # the config really was applied (not silently the default linear schedule)
    assert path.scheduler_config["beta_schedule"] == cfg["beta_schedule"]
    ref = np.sqrt(np.cumprod(1 - _betas_float64(cfg, 1000)))
    np.testing.assert_allclose(path.alpha(t).numpy(), ref, rtol=2e-4)
    # t = -1 is the clean end (DDIM's set_alpha_to_one)
    one = torch.tensor([-1.0], dtype=torch.float64)
    assert path.alpha(one).item() == 1.0 and abs(path.sigma(one).item()) == 0.0


def test_vp_config_overrides_and_num_train_timesteps():
    path = VPPath.from_scheduler_config({"num_train_timesteps": 500, "_class_name": "DDPMScheduler"},
                                        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert path.num_train_timesteps == 500 and path.t_max == 499
    acp = DDPMScheduler(num_train_timesteps=500, **SD_SCHEDULE).alphas_cumprod.double()
    torch.testing.assert_close(path.alpha(torch.arange(500.0, dtype=torch.float64)), acp.sqrt(), rtol=1e-12, atol=0)


def test_vp_zero_terminal_snr():
    cfg = dict(SD_SCHEDULE, rescale_betas_zero_snr=True)
    path = VPPath.from_scheduler_config(cfg)
    acp = DDPMScheduler(**cfg).alphas_cumprod.double()
    assert acp[-1] == 0
    t = torch.arange(1000, dtype=torch.float64)
    a, s = path.alpha(t), path.sigma(t)
    assert torch.isfinite(a).all() and torch.isfinite(s).all()
    torch.testing.assert_close(a, acp.sqrt(), rtol=1e-12, atol=1e-300)
    assert a[-1] == 0 and s[-1] == 1
    torch.testing.assert_close(path.t_from_log_snr(path.log_snr(t)), t, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["vp_linear", "vp_scaled_linear"])
def test_vp_interpolates_log_alphas_cumprod_between_knots(name):
    path = get_path(name)
    t = interior_times(path, 64, seed=1)
    log_acp = np.concatenate([[0.0], path._log_acp[1:].numpy()])  # knot at t=-1 is alpha=1
    ref = np.interp(t.numpy(), np.arange(-1, path.num_train_timesteps), log_acp)
    np.testing.assert_allclose(2 * torch.log(path.alpha(t)).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose((path.alpha(t) ** 2 + path.sigma(t) ** 2).numpy(), 1.0, rtol=1e-12)


def _closed_forms(name: str):
    if name == "flow":
        return lambda t: 1 - t, lambda t: t
    if name == "edm":
        return lambda t: torch.ones_like(t), lambda t: t
    if name == "trigflow":
        return torch.cos, lambda t: 0.5 * torch.sin(t)
    return None


@pytest.mark.parametrize("name", ["flow", "edm", "trigflow"])
def test_continuous_paths_closed_forms(name):
    path = get_path(name)
    alpha, sigma = _closed_forms(name)
    t = interior_times(path, 32)
    torch.testing.assert_close(path.alpha(t), alpha(t), rtol=1e-15, atol=0)
    torch.testing.assert_close(path.sigma(t), sigma(t), rtol=1e-15, atol=0)
    torch.testing.assert_close(path.log_snr(t), 2 * torch.log(alpha(t) / sigma(t)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_d_alpha_sigma_matches_finite_differences(name):
    path = get_path(name)
    t = interior_times(path, 48, seed=2)
    da, ds = path.d_alpha_sigma(t)
    torch.testing.assert_close(da, fd_derivative(path.alpha, t, path), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(ds, fd_derivative(path.sigma, t, path), rtol=1e-6, atol=1e-12)
    # velocity is d/dt of add_noise for fixed (x0, eps)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(48, 3, generator=g, dtype=torch.float64), torch.randn(48, 3, generator=g, dtype=torch.float64)
    fd_v = fd_derivative(lambda tt: path.add_noise(x0, eps, tt), t, path)
    torch.testing.assert_close(path.velocity(x0, eps, t), fd_v, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_t_from_log_snr_inverts_log_snr(name):
    path = get_path(name)
    t = interior_times(path, 128, seed=4)
    if isinstance(path, VPPath):  # integer knots too
        t = torch.cat([t, torch.arange(0, 1000, 37, dtype=torch.float64),
                       torch.tensor([0.0, 999.0], dtype=torch.float64)])
    torch.testing.assert_close(path.t_from_log_snr(path.log_snr(t)), t, rtol=1e-10, atol=1e-9)
    lam = torch.linspace(-4.0, 4.0, 41, dtype=torch.float64)  # inside every path's range
    torch.testing.assert_close(path.log_snr(path.t_from_log_snr(lam)), lam, rtol=1e-9, atol=1e-9)


def test_vp_t_from_log_snr_clamps_to_table():
    path = get_path("vp_linear")
    out = path.t_from_log_snr(torch.tensor([float("inf"), 60.0, -60.0], dtype=torch.float64))
    assert out[0] == -1.0 and -1.0 <= out[1] < 0.0 and out[2] == path.t_max


@pytest.mark.parametrize("src_name,dst_name", list(itertools.product(PATH_NAMES, PATH_NAMES)))
def test_convert_state_equal_snr_same_decomposition(src_name, dst_name):
    src, dst = get_path(src_name), get_path(dst_name)
    g = torch.Generator().manual_seed(5)
    lam = -5 + 10 * torch.rand(16, generator=g, dtype=torch.float64)
    t_src = src.t_from_log_snr(lam)
    x0 = torch.randn(16, 2, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 2, 3, generator=g, dtype=torch.float64)
    x_dst, t_dst = convert_state(src.add_noise(x0, eps, t_src), t_src, src, dst)
    torch.testing.assert_close(dst.log_snr(t_dst), src.log_snr(t_src), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x_dst, dst.add_noise(x0, eps, t_dst), rtol=1e-9, atol=1e-9)


def test_vp_to_edm_sigma_is_euler_discrete_sigma():
    """VP -> EDM maps timestep t to sigma = sqrt((1 - acp_t) / acp_t) (EulerDiscreteScheduler's sigmas)."""
    vp, edm = get_path("vp_scaled_linear"), get_path("edm")
    acp = DDPMScheduler(**SD_SCHEDULE).alphas_cumprod.double()
    t = torch.arange(0, 1000, 7, dtype=torch.float64)
    x = torch.ones(len(t), 4, dtype=torch.float64)
    x_edm, sig = convert_state(x, t, vp, edm)
    torch.testing.assert_close(sig, ((1 - acp[t.long()]) / acp[t.long()]).sqrt(), rtol=1e-9, atol=0)
    torch.testing.assert_close(x_edm, x / acp[t.long()].sqrt()[:, None], rtol=1e-12, atol=0)


def test_expand_like_shapes_and_dtypes():
    x = torch.zeros(4, 3, 5, 5, dtype=torch.float32)
    t = torch.arange(4, dtype=torch.float64)
    e = expand_like(t, x)
    assert e.shape == (4, 1, 1, 1) and e.dtype == torch.float32
    assert torch.equal(e.flatten(), t.float())
    assert expand_like(torch.tensor(2.0, dtype=torch.float64), x).ndim == 0
    assert expand_like(t, torch.zeros(4, 2, dtype=torch.float64)).shape == (4, 1)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_path_from_config_round_trip(name):
    path = get_path(name)
    again = path_from_config(path.config())
    assert type(again) is type(path)
    t = interior_times(path, 16, seed=6)
    torch.testing.assert_close(again.alpha(t), path.alpha(t), rtol=0, atol=0)
    torch.testing.assert_close(again.sigma(t), path.sigma(t), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown path"):
        path_from_config({"name": "nope"})


def test_model_timesteps():
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(FlowPath(num_train_timesteps=1000).model_timestep(t), t * 1000)
    torch.testing.assert_close(EDMPath().model_timestep(t), torch.log(t) / 4)  # EDM c_noise = ln(sigma)/4
    torch.testing.assert_close(get_path("vp_linear").model_timestep(t), t)
    assert TrigFlowPath().t_max == pytest.approx(math.pi / 2)
