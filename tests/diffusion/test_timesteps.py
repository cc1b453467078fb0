"""Sampling grids vs diffusers and closed forms; training-time distributions vs scipy (KS tests)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from scipy import stats

from fewstep.diffusion import (EDMPath, FlowPath, GaussianPath, TrigFlowPath, VPPath, dynamic_shift_mu,
                               exponential_time_shift, sample_training_times, sampling_times, shift_sigma,
                               solver_grid)

from ._common import SD_SCHEDULE, get_path

T = 1000


# ---------------------------------------------------------------- VP / DDIM grids


def _ddim_closed_form(spacing: str, n: int, steps_offset: int) -> np.ndarray:
    if spacing == "leading":
        return np.arange(n)[::-1] * (T // n) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    return np.round(np.linspace(0, T - 1, n))[::-1]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 4, 10, 25])
@pytest.mark.parametrize("steps_offset,alpha_one", [(0, True), (1, False)])
def test_vp_grid_equals_ddim_timesteps(spacing, n, steps_offset, alpha_one):
    path = get_path("vp_scaled_linear")
    times = sampling_times(path, n, timestep_spacing=spacing, steps_offset=steps_offset, set_alpha_to_one=alpha_one)
    sched = DDIMScheduler(**SD_SCHEDULE, timestep_spacing=spacing, steps_offset=steps_offset,
                          set_alpha_to_one=alpha_one)
    sched.set_timesteps(n)
    assert times.dtype == torch.float64 and len(times) == n + 1
    assert torch.equal(times[:-1], sched.timesteps.double())
    offset = steps_offset if spacing == "leading" else 0
    np.testing.assert_array_equal(times[:-1].numpy(), _ddim_closed_form(spacing, n, offset))
    assert times[-1].item() == (-1.0 if alpha_one else 0.0)
    # the final time has DDIM's final_alpha_cumprod
    torch.testing.assert_close(path.alpha(times[-1:]) ** 2, sched.final_alpha_cumprod.double().reshape(1),
                               rtol=1e-12, atol=0)


def test_vp_grid_uses_the_paths_scheduler_config():
    path = VPPath.from_scheduler_config({"num_train_timesteps": 500, "steps_offset": 1, "timestep_spacing": "leading"})
    times = sampling_times(path, 5)
    np.testing.assert_array_equal(times.numpy(), [401, 301, 201, 101, 1, -1])
    np.testing.assert_array_equal(sampling_times(path, 5, timestep_spacing="trailing").numpy(),
                                  [499, 399, 299, 199, 99, -1])


# ---------------------------------------------------------------- flow grids


def test_shift_sigma_matches_flow_match_training_sigmas():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    base = torch.arange(T, 0, -1, dtype=torch.float64) / T
    torch.testing.assert_close(shift_sigma(base, 3.0), sched.sigmas.double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(shift_sigma(base, 1.0), base)
    s = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(shift_sigma(s, 3.0), s)


@pytest.mark.parametrize("n", [1, 2, 4, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_grid_with_shift(n, shift):
    times = sampling_times(FlowPath(), n, shift=shift)
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(n)
    assert torch.equal(times, sched.sigmas.double())
    # closed form; diffusers' grid starts at 1 and ends at its (already shifted) sigma_min = shift(1/T)
    sh = lambda s: shift * s / (1 + (shift - 1) * s)  # noqa: E731
    ref = sh(np.linspace(1.0, sh(1.0 / T), n))
    np.testing.assert_allclose(times[:-1].numpy(), ref, rtol=1e-6)
    assert times[-1] == 0


@pytest.mark.parametrize("seq_len", [256, 1024, 4096, 6000])
def test_dynamic_shift_mu_matches_flux_calculate_shift(seq_len):
    assert dynamic_shift_mu(seq_len) == pytest.approx(calculate_shift(seq_len), rel=1e-12)
    kw = dict(base_seq_len=64, max_seq_len=1024, base_shift=0.3, max_shift=1.5)
    assert dynamic_shift_mu(seq_len, **kw) == pytest.approx(calculate_shift(seq_len, **kw), rel=1e-12)
    assert dynamic_shift_mu(256) == pytest.approx(0.5) and dynamic_shift_mu(4096) == pytest.approx(1.15)


@pytest.mark.parametrize("n", [1, 4, 20])
def test_flow_grid_with_dynamic_shifting(n):
    mu = dynamic_shift_mu(64 * 64)
    times = sampling_times(FlowPath(), n, use_dynamic_shifting=True, mu=mu)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
    sched.set_timesteps(n, mu=mu)
    assert torch.equal(times, sched.sigmas.double())
    base = np.linspace(1.0, 1.0 / T, n)
    ref = math.exp(mu) / (math.exp(mu) + (1 / base - 1))
    np.testing.assert_allclose(times[:-1].numpy(), ref, rtol=1e-6)
    ours = exponential_time_shift(torch.from_numpy(base), mu)
    np.testing.assert_allclose(ours.numpy(), sched.time_shift(mu, 1.0, base), rtol=1e-12)


# ---------------------------------------------------------------- EDM / TrigFlow grids


@pytest.mark.parametrize("n", [2, 5, 18])
def test_edm_grid_is_karras(n):
    path = EDMPath(0.002, 80.0)
    times = sampling_times(path, n)
    i = np.arange(n)
    rho = 7.0
    ref = (80.0 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho  # EDM Eq. 5
    np.testing.assert_allclose(times[:-1].numpy(), ref, rtol=1e-12)
    assert times[-1] == 0
    sched = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    sched.set_timesteps(n)
    torch.testing.assert_close(times, sched.sigmas.double(), rtol=1e-6, atol=0)


def test_edm_single_step_starts_at_sigma_max_and_trigflow_uniform():
    assert sampling_times(EDMPath(), 1).tolist() == [80.0, 0.0]
    times = sampling_times(TrigFlowPath(), 4)
    np.testing.assert_allclose(times.numpy(), np.pi / 2 * np.array([1, 0.75, 0.5, 0.25, 0.0]), rtol=1e-15, atol=1e-15)


def test_bad_grids_raise():
    with pytest.raises(ValueError, match="num_steps"):
        sampling_times(FlowPath(), 0)

    class Other(GaussianPath):
        alpha = sigma = d_alpha_sigma = t_from_log_snr = lambda self, t: t  # noqa: E731
    with pytest.raises(TypeError, match="no sampling grid"):
        sampling_times(Other(), 2)


@pytest.mark.parametrize("path,end", [(FlowPath(), 1.0), (VPPath.from_scheduler_config(), 999.0)])
def test_solver_grid_is_diffusers_or_even_in_path_time(path, end):
    np.testing.assert_array_equal(solver_grid(path, 8).numpy(), sampling_times(path, 8).numpy())
    np.testing.assert_allclose(solver_grid(path, 8, "uniform").numpy(), end * np.arange(8, -1, -1) / 8, rtol=1e-15,
                               atol=1e-12)
    with pytest.raises(ValueError, match="'diffusers' or 'uniform'"):
        solver_grid(path, 8, "even")


# ---------------------------------------------------------------- training-time distributions

N = 4000
P_KS = 1e-3  # seeded, so deterministic; a correct sampler fails this with probability 1e-3


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name,lo,hi", [("vp_linear", 0.0, 999.0), ("flow", 1e-3, 1.0), ("edm", 0.002, 80.0),
                                        ("trigflow", 1e-4, math.pi / 2)])
def test_uniform_training_times(name, lo, hi):
    t = sample_training_times(get_path(name), N, _gen(1))
    assert t.dtype == torch.float64 and t.shape == (N,)
    assert lo <= t.min() and t.max() <= hi
    assert stats.kstest(t.numpy(), stats.uniform(lo, hi - lo).cdf).pvalue > P_KS
    torch.testing.assert_close(sample_training_times(get_path(name), N, _gen(1)), t, rtol=0, atol=0)


def test_flow_path_fed_the_time_itself_trains_over_the_whole_path():
    """num_train_timesteps 1 (scripts/retime_teacher.py's teacher: timestep = t) once made the smallest trained time
    1 / 1 = 1, so every generator, DMD and LADD time collapsed to pure noise (LADD's discriminator then saw only
    noise and gave the student no gradient). It keeps the 1000-step floor; diffusers' grid is refused, not
    degenerate."""
    t = sample_training_times(FlowPath(num_train_timesteps=1), N, _gen(3))
    assert 1e-3 <= t.min() and t.max() <= 1.0
    assert stats.kstest(t.numpy(), stats.uniform(1e-3, 1 - 1e-3).cdf).pvalue > P_KS
    torch.testing.assert_close(t, sample_training_times(FlowPath(), N, _gen(3)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="grid: uniform"):
        solver_grid(FlowPath(num_train_timesteps=1), 4)
    torch.testing.assert_close(solver_grid(FlowPath(num_train_timesteps=1), 4, "uniform"),
                               torch.linspace(1, 0, 5, dtype=torch.float64))


def test_uniform_shifted_flow_times():
    t = sample_training_times(FlowPath(), N, _gen(2), shift=3.0).numpy()
    u = t / (3.0 - 2.0 * t)  # inverse of SD3's shift
    assert stats.kstest(u, stats.uniform(1e-3, 1 - 1e-3).cdf).pvalue > P_KS


@pytest.mark.parametrize("mean,std,shift", [(0.0, 1.0, 1.0), (-0.5, 0.8, 1.0), (0.0, 1.0, 3.0)])
def test_logit_normal_flow_times(mean, std, shift):
    t = sample_training_times(FlowPath(), N, _gen(3), "logit_normal", mean=mean, std=std, shift=shift).numpy()
    u = t / (shift - (shift - 1) * t)
    assert stats.kstest(np.log(u / (1 - u)), stats.norm(mean, std).cdf).pvalue > P_KS


@pytest.mark.parametrize("name", ["edm", "vp_linear", "trigflow", "flow"])
def test_lognormal_times_have_lognormal_noise_to_signal(name):
    path = get_path(name)
    t = sample_training_times(path, N, _gen(4), "lognormal", mean=-1.2, std=1.2)
    # sigma/alpha ~ LogNormal(-1.2, 1.2) (EDM P_mean/P_std)
    log_ratio = torch.log(path.sigma(t) / path.alpha(t)).numpy()
    assert stats.kstest(log_ratio, stats.norm(-1.2, 1.2).cdf).pvalue > P_KS


def test_bad_training_distributions_raise():
    with pytest.raises(ValueError, match="flow path"):
        sample_training_times(EDMPath(), 4, distribution="logit_normal")
    with pytest.raises(ValueError, match="unknown time distribution"):
        sample_training_times(FlowPath(), 4, distribution="beta")
