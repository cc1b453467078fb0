"""ODE / SDE steps: agreement with diffusers' schedulers, closed-form transitions, and convergence order."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       HeunDiscreteScheduler)

from fewstep.diffusion import (EDMPath, FlowPath, TrigFlowPath, VPPath, convert_state, ddim_step, dynamic_shift_mu,
                               euler_step, forward_noise, heun_step, pf_ode_velocity, renoise_step, sampling_times,
                               solver_step, tcd_step, to_x0_eps)

from ._common import PATH_NAMES, SD_SCHEDULE, fd_derivative, get_path, interior_times

B = 3
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers + numpy 2


def _model(x: torch.Tensor, timestep) -> torch.Tensor:
    """A fixed nonlinear stand-in for a network (any deterministic map of (x, timestep) will do)."""
    ts = float(timestep) / 1000.0
    return 0.8 * torch.tanh(x) + 0.3 * torch.sin(3 * x + ts) - 0.2 * ts


def _bt(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1).expand(B).clone()


# ---------------------------------------------------------------- diffusers agreement


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing,n,steps_offset,alpha_one", [("leading", 10, 1, False), ("trailing", 4, 0, True),
                                                               ("leading", 8, 0, True), ("trailing", 1, 0, True)])
def test_ddim_step_matches_diffusers(prediction_type, spacing, n, steps_offset, alpha_one):
    path = get_path("vp_scaled_linear")
    sched = DDIMScheduler(**SD_SCHEDULE, prediction_type=prediction_type, clip_sample=False, timestep_spacing=spacing,
                          steps_offset=steps_offset, set_alpha_to_one=alpha_one)
    sched.set_timesteps(n)
    times = sampling_times(path, n, timestep_spacing=spacing, steps_offset=steps_offset, set_alpha_to_one=alpha_one)
    assert torch.equal(times[:-1], sched.timesteps.double())
    x = torch.randn(B, 4, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i, ts in enumerate(sched.timesteps):
        out = _model(x, ts)
        ref = sched.step(out, ts, x, eta=0.0).prev_sample
        x0, eps = to_x0_eps(out, prediction_type, x, _bt(times[i]), path)
        ours = ddim_step(x0, eps, _bt(times[i + 1]), path)
        torch.testing.assert_close(ours, ref, rtol=2e-5, atol=2e-5)
        x = ref


@pytest.mark.parametrize("kwargs", [{}, {"shift": 3.0}, {"use_dynamic_shifting": True, "mu": dynamic_shift_mu(1024)}],
                         ids=["plain", "shift3", "dynamic"])
def test_flow_match_euler_matches_ddim_and_euler(kwargs):
    path = FlowPath()
    kwargs = dict(kwargs)
    mu = kwargs.pop("mu", None)
    n = 6
    sched = FlowMatchEulerDiscreteScheduler(**kwargs)
    sched.set_timesteps(n, mu=mu)
    times = sampling_times(path, n, **kwargs, **({} if mu is None else {"mu": mu}))
    assert torch.equal(times, sched.sigmas.double())
    torch.testing.assert_close(path.model_timestep(times[:-1]), sched.timesteps.double(), rtol=1e-6, atol=1e-4)

    def denoise(x, t):
        return to_x0_eps(_model(x, path.model_timestep(t[0])), "flow_prediction", x, t, path)

    x = torch.randn(B, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    for i, ts in enumerate(sched.timesteps):
        u = _model(x, ts)
        ref = sched.step(u, ts, x).prev_sample.double()
        x64, t, tn = x.double(), _bt(times[i]), _bt(times[i + 1])
        x0, eps = to_x0_eps(u.double(), "flow_prediction", x64, t, path)
        torch.testing.assert_close(ddim_step(x0, eps, tn, path), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(euler_step(x64, t, tn, pf_ode_velocity(x0, eps, t, path)), ref, rtol=1e-5, atol=1e-5)
        for solver in ("ddim", "euler"):
            out = solver_step(solver, x, t.float(), tn.float(), denoise, path).double()
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        x = ref.float()


def _vp_denoiser_on_edm(vp: VPPath, prediction_type: str, calls: list):
    """A VP network driven on the EDM path: convert the state back to VP, call it, decompose."""
    edm = EDMPath()

    def denoise(x_edm, sig):
        x_vp, t_vp = convert_state(x_edm, sig, edm, vp)
        calls.append((x_vp, t_vp))
        pred = _model(x_vp.float(), t_vp[0]).double()
        return to_x0_eps(pred, prediction_type, x_vp, t_vp, vp)
    return denoise


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_discrete_equals_euler_on_edm_path(prediction_type):
    vp, edm = get_path("vp_scaled_linear"), EDMPath()
    n = 10
    sched = EulerDiscreteScheduler(**SD_SCHEDULE, prediction_type=prediction_type, timestep_spacing="leading",
                                   steps_offset=1)
    sched.set_timesteps(n)
    times = sampling_times(vp, n, timestep_spacing="leading", steps_offset=1)
    assert torch.equal(times[:-1], sched.timesteps.double())
    calls: list = []
    denoise = _vp_denoiser_on_edm(vp, prediction_type, calls)
    x = torch.randn(B, 4, 4, 4, generator=torch.Generator().manual_seed(2)) * sched.init_noise_sigma
    for i, ts in enumerate(sched.timesteps):
        t = _bt(times[i])
        x_vp = x.double() * vp.alpha(t).reshape(-1, 1, 1, 1)
        model_in = sched.scale_model_input(x, ts)  # x / sqrt(sigma^2 + 1)
        torch.testing.assert_close(model_in.double(), x_vp, rtol=1e-5, atol=1e-6)
        ref = sched.step(_model(model_in, ts), ts, x).prev_sample.double()

        x_e, sig = convert_state(x_vp, t, vp, edm)
        _, sig_next = convert_state(x_vp, _bt(times[i + 1]), vp, edm)
        torch.testing.assert_close(sig, sched.sigmas[i].double().expand(B), rtol=1e-5, atol=0)
        torch.testing.assert_close(sig_next, sched.sigmas[i + 1].double().expand(B), rtol=1e-5, atol=0)
        torch.testing.assert_close(x_e, x.double(), rtol=1e-5, atol=1e-5)
        x0, eps = to_x0_eps(_model(model_in, ts).double(), prediction_type, x_vp, t, vp)
        ours = euler_step(x_e, sig, sig_next, pf_ode_velocity(x0, eps, sig, edm))
        scale = ref.abs().max()
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * scale)
        ours2 = solver_step("euler", x.double(), sig, sig_next, denoise, edm)
        torch.testing.assert_close(ours2, ref, rtol=1e-5, atol=1e-5 * scale)
        x = ref.float()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_heun_discrete_equals_heun_on_edm_path(prediction_type):
    vp, edm = get_path("vp_scaled_linear"), EDMPath()
    n = 5
    sched = HeunDiscreteScheduler(**SD_SCHEDULE, prediction_type=prediction_type, timestep_spacing="leading",
                                  steps_offset=1)
    sched.set_timesteps(n)
    times = sampling_times(vp, n, timestep_spacing="leading", steps_offset=1)
    calls: list = []
    denoise = _vp_denoiser_on_edm(vp, prediction_type, calls)
    x = torch.randn(B, 2, 3, 3, generator=torch.Generator().manual_seed(3)) * sched.init_noise_sigma
    x_ref = x.clone()
    for ts in sched.timesteps:  # interleaved: t0, t1, t1, t2, t2, ...; the last interval is first order
        model_in = sched.scale_model_input(x_ref, ts)
        x_ref = sched.step(_model(model_in, ts), ts, x_ref).prev_sample
    x_ours = x.double()
    for i in range(n):
        _, sig = convert_state(x_ours, _bt(times[i]), vp, edm)
        _, sig_next = convert_state(x_ours, _bt(times[i + 1]), vp, edm)
        before = len(calls)
        x_ours = heun_step(x_ours, sig, sig_next, denoise, edm)
        assert len(calls) - before == (1 if i == n - 1 else 2)  # Euler fallback at the clean end
    torch.testing.assert_close(x_ours, x_ref.double(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- closed-form transitions


@pytest.mark.parametrize("name", PATH_NAMES)
def test_forward_noise_composes_to_marginal(name):
    """q(x_t|x_s) o q(x_s|x0) has mean alpha_t x0 and variance sigma_t^2 (exactly, by linearity)."""
    path = get_path(name)
    t_a, t_b = interior_times(path, 16, seed=7), interior_times(path, 16, seed=8)
    s, t = torch.minimum(t_a, t_b), torch.maximum(t_a, t_b)
    ones, zeros = torch.ones(16, 1, dtype=torch.float64), torch.zeros(16, 1, dtype=torch.float64)

    def compose(x0, e1, e2):
        return forward_noise(path.add_noise(x0, e1, s), s, t, e2, path)

    c_x0, c_e1, c_e2 = compose(ones, zeros, zeros), compose(zeros, ones, zeros), compose(zeros, zeros, ones)
    torch.testing.assert_close(c_x0.squeeze(1), path.alpha(t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((c_e1**2 + c_e2**2).squeeze(1), path.sigma(t) ** 2, rtol=1e-9, atol=1e-12)
    # and a Monte-Carlo check of the same two moments at one (s, t) pair
    g = torch.Generator().manual_seed(9)
    n = 20000
    s1, t1 = s[:1].expand(n), t[:1].expand(n)
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    xt = forward_noise(path.add_noise(x0, torch.randn(n, 1, generator=g, dtype=torch.float64), s1), s1, t1,
                       torch.randn(n, 1, generator=g, dtype=torch.float64), path)
    sd = path.sigma(t[:1]).item()
    assert abs(xt.mean().item() - 0.7 * path.alpha(t[:1]).item()) < 5 * sd / math.sqrt(n)
    assert abs(xt.var().item() / sd**2 - 1) < 5 * math.sqrt(2 / n)


@pytest.mark.parametrize("name", PATH_NAMES)
def test_tcd_gamma_zero_is_ddim(name):
    path = get_path(name)
    g = torch.Generator().manual_seed(10)
    x0, eps, noise = (torch.randn(8, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t_next = interior_times(path, 8, seed=11)
    torch.testing.assert_close(tcd_step(x0, eps, t_next, 0.0, noise, path), ddim_step(x0, eps, t_next, path),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vp_linear", "flow", "trigflow"])
def test_tcd_gamma_one_is_full_renoise(name):
    path = get_path(name)
    g = torch.Generator().manual_seed(12)
    x0, eps, noise = (torch.randn(8, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t_next = interior_times(path, 8, seed=13)
    torch.testing.assert_close(tcd_step(x0, eps, t_next, 1.0, noise, path), renoise_step(x0, t_next, noise, path),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(renoise_step(x0, t_next, noise, path), path.add_noise(x0, noise, t_next))


def test_tcd_intermediate_gamma_closed_form_on_flow():
    """Flow path, s = (1-gamma) t: x = (1-t) x0 + (1-t)/(1-s) s eps + sqrt(t^2 - ((1-t) s/(1-s))^2) z."""
    path = FlowPath()
    g = torch.Generator().manual_seed(14)
    x0, eps, z = (torch.randn(8, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = interior_times(path, 8, seed=15)
    gamma = 0.3
    s = (1 - gamma) * t
    c_eps = (1 - t) / (1 - s) * s
    ref = (1 - t)[:, None] * x0 + c_eps[:, None] * eps + torch.sqrt(t**2 - c_eps**2)[:, None] * z
    torch.testing.assert_close(tcd_step(x0, eps, t, gamma, z, path), ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- Gaussian data: exact PF-ODE

MU, C = 0.7, 0.6  # data N(MU, C^2 I)


def _gauss_denoise(path):
    def denoise(x, t):
        a = path.alpha(t).reshape(-1, 1)
        s = path.sigma(t).reshape(-1, 1)
        x0 = MU + a * C**2 / (a * a * C**2 + s * s) * (x - a * MU)
        return x0, (x - a * x0) / s
    return denoise


def _gauss_exact(path, x_start, t_start, t_end):
    """For Gaussian data the PF-ODE keeps z = (x - a mu) / sqrt(a^2 c^2 + s^2) constant."""
    def std(t):
        return torch.sqrt(path.alpha(t) ** 2 * C**2 + path.sigma(t) ** 2).reshape(-1, 1)
    z = (x_start - path.alpha(t_start).reshape(-1, 1) * MU) / std(t_start)
    return path.alpha(t_end).reshape(-1, 1) * MU + std(t_end) * z


@pytest.mark.parametrize("name", PATH_NAMES)
def test_pf_ode_velocity_is_exact_derivative_for_gaussian_data(name):
    path = get_path(name)
    t = interior_times(path, 16, seed=16)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    x0, eps = _gauss_denoise(path)(x, t)
    fd = fd_derivative(lambda u: _gauss_exact(path, x, t, u), t, path)
    torch.testing.assert_close(pf_ode_velocity(x0, eps, t, path), fd, rtol=1e-6, atol=1e-8)


def _integrate(path, solver, t_hi, t_lo, n, x_start):
    grid = torch.linspace(t_hi, t_lo, n + 1, dtype=torch.float64)
    x, denoise = x_start, _gauss_denoise(path)
    for i in range(n):
        t, tn = grid[i].expand(len(x)), grid[i + 1].expand(len(x))
        x = solver_step(solver, x, t, tn, denoise, path)
    return x


@pytest.mark.parametrize("path,t_hi,t_lo", [(FlowPath(), 0.95, 0.05), (EDMPath(), 5.0, 0.2),
                                            (TrigFlowPath(), 1.4, 0.1)], ids=["flow", "edm", "trigflow"])
def test_heun_second_order_euler_first_order(path, t_hi, t_lo):
    x_start = torch.linspace(-3, 3, 7, dtype=torch.float64).reshape(-1, 1) * path.sigma(torch.tensor(t_hi)).item()
    t_hi_b = torch.full((7,), t_hi, dtype=torch.float64)
    exact = _gauss_exact(path, x_start, t_hi_b, torch.full((7,), t_lo, dtype=torch.float64))
    err = {s: [(_integrate(path, s, t_hi, t_lo, n, x_start) - exact).abs().max().item() for n in (16, 32)]
           for s in ("euler", "heun")}
    r_euler, r_heun = err["euler"][0] / err["euler"][1], err["heun"][0] / err["heun"][1]
    assert 1.6 < r_euler < 2.5, err
    assert 3.2 < r_heun < 4.8, err
    assert err["heun"][0] < err["euler"][0] and err["heun"][1] < err["euler"][1] / 4  # more accurate, and more so finer


def test_heun_falls_back_to_euler_at_clean_end():
    path = FlowPath()
    calls = []
    base = _gauss_denoise(path)

    def denoise(x, t):
        calls.append(t)
        return base(x, t)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    t, tn = torch.full((4,), 0.3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    out = heun_step(x, t, tn, denoise, path)
    assert len(calls) == 1
    x0, eps = base(x, t)
    torch.testing.assert_close(out, euler_step(x, t, tn, pf_ode_velocity(x0, eps, t, path)))


def test_heun_mixed_batch_steps_each_sample_as_alone_and_never_evaluates_sigma_zero():
    path = FlowPath()
    base = _gauss_denoise(path)

    def denoise(x, t):
        assert bool((path.sigma(t) > 0).all()), t  # a training batch's last-step samples must not reach sigma 0
        return base(x, t)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    t = torch.tensor([0.3, 0.3, 0.8, 0.5], dtype=torch.float64)
    tn = torch.tensor([0.0, 0.1, 0.6, 0.0], dtype=torch.float64)
    out = heun_step(x, t, tn, denoise, path)
    for i in range(4):
        alone = heun_step(x[i:i + 1], t[i:i + 1], tn[i:i + 1], base, path)
        torch.testing.assert_close(out[i:i + 1], alone, rtol=1e-12, atol=1e-12)


def test_solver_step_unknown_name():
    with pytest.raises(ValueError, match="unknown solver"):
        solver_step("dpm++", torch.zeros(1, 1), torch.ones(1), torch.zeros(1), _gauss_denoise(FlowPath()), FlowPath())
