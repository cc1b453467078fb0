"""fewstep.schedulers.FewStepConsistencyScheduler against independent references: diffusers' TCDScheduler and
LCMScheduler where they take the same step, float64 TrigFlow math for the time axis, and the trainer's own
sampler loop (objectives.base.consistency_sample) for every gamma, path and boundary."""

from __future__ import annotations

import pytest
import torch

from fewstep.diffusion import FlowPath, TrigFlowPath, VPPath, lcm_boundary_scalings, tcd_step, to_x0_eps
from fewstep.objectives.base import consistency_sample, initial_state
from fewstep.schedulers import FewStepConsistencyScheduler

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def vp_path() -> VPPath:
    return VPPath.from_scheduler_config(SD_BETAS)


def network(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for a diffusion network, called with the model timestep like a diffusers model."""
    return torch.tanh(x) * 0.7 + 0.3 * torch.sin(timestep.reshape(-1, 1, 1, 1) / 300.0 + x)


def pipeline_loop(scheduler, noise_draws: list[torch.Tensor], latents: torch.Tensor, **schedule) -> torch.Tensor:
    """What a diffusers pipeline does: set_timesteps, then model + scheduler.step per timestep; the scheduler's
    re-noising draws come from noise_draws in order."""
    import fewstep.schedulers as mod

    draws = iter(noise_draws)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mod, "randn_tensor", lambda *a, **k: next(draws))
        scheduler.set_timesteps(**schedule)
        x = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.step(network(scheduler.scale_model_input(x, t), t.expand(len(x))), t, x).prev_sample
    return x


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_time_axis_step_equals_trigflow_step_in_float64(gamma):
    """tcd_step on a native path with TrigFlow as the time axis = the TrigFlow step, state scaled by
    k = alpha_native / alpha_trig at equal SNR (so an sCM sampler runs exactly on the native path)."""
    gen = torch.Generator().manual_seed(0)
    x0, eps, noise = (torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    trig = TrigFlowPath(sigma_data=0.5)
    for native, t_next in ((vp_path(), torch.tensor([600.0, 240.5, 31.25], dtype=torch.float64)),
                           (FlowPath(), torch.tensor([0.9, 0.5, 0.05], dtype=torch.float64))):
        u = trig.t_from_log_snr(native.log_snr(t_next))
        on_trig = tcd_step(x0, eps, u, gamma, noise, trig)
        expected = on_trig * (native.alpha(t_next) / trig.alpha(u)).reshape(-1, 1, 1, 1)
        got = tcd_step(x0, eps, t_next, gamma, noise, native, time_axis=trig)
        assert torch.allclose(got, expected, atol=1e-9, rtol=1e-9), (type(native).__name__, gamma)


def test_first_step_equals_diffusers_tcd_where_the_floors_agree():
    """VP, timesteps [999, 499], gamma 0.5: TCD's s = floor(0.5 * 499) = 249 = ours (-1 + 0.5 * 500), so step 1
    must match diffusers' TCDScheduler to float32 precision (same noise)."""
    from diffusers import TCDScheduler

    gen = torch.Generator().manual_seed(1)
    x, out, noise = (torch.randn(2, 1, 4, 4, generator=gen) for _ in range(3))
    ours = FewStepConsistencyScheduler(path=vp_path().config(), prediction_type="epsilon", gamma=0.5)
    ours.set_timesteps(timesteps=[999, 499])
    tcd = TCDScheduler(**SD_BETAS, prediction_type="epsilon")
    tcd.set_timesteps(timesteps=[999, 499])
    import diffusers.schedulers.scheduling_tcd as tcd_mod

    import fewstep.schedulers as mod
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tcd_mod, "randn_tensor", lambda *a, **k: noise)
        mp.setattr(mod, "randn_tensor", lambda *a, **k: noise)
        ref = tcd.step(out, 999, x, eta=0.5).prev_sample
        got = ours.step(out, 999, x).prev_sample
    assert torch.allclose(got, ref, atol=2e-6, rtol=1e-5)


def test_gamma_one_with_boundary_equals_diffusers_lcm():
    """gamma 1 with LCM's boundary condition at timestep 0 = LCMScheduler's step, every step."""
    from diffusers import LCMScheduler

    gen = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 1, 4, 4, generator=gen)
    draws = [torch.randn(2, 1, 4, 4, generator=gen) for _ in range(3)]
    ours = FewStepConsistencyScheduler(path=vp_path().config(), prediction_type="epsilon", gamma=1.0, boundary_time=0.0)
    lcm = LCMScheduler(**SD_BETAS, prediction_type="epsilon", original_inference_steps=1000)
    got = pipeline_loop(ours, draws, latents, timesteps=[999, 759, 499, 259])
    import diffusers.schedulers.scheduling_lcm as lcm_mod

    # LCM's prev_sample path, replayed step by step (denoised at the last step)
    it = iter(draws)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lcm_mod, "randn_tensor", lambda *a, **k: next(it))
        lcm.set_timesteps(timesteps=[999, 759, 499, 259])
        x = latents
        for i, t in enumerate(lcm.timesteps):
            step = lcm.step(network(x, t.expand(len(x)).float()), t, x)
            x = step.denoised if i + 1 == len(lcm.timesteps) else step.prev_sample
        ref = x
    assert torch.allclose(got, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("case", [
    dict(path="vp", times=[999.0, 499.0, 249.0], gamma=0.0),
    dict(path="vp", times=[999.0, 640.5, 120.25], gamma=0.5),
    dict(path="vp", times=[980.0, 500.0], gamma=1.0, boundary=0.0),
    dict(path="flow", times=[1.0, 0.6, 0.25], gamma=0.3),
    dict(path="flow", times=[0.8, 0.4], gamma=0.7, boundary=0.0),
    dict(path="vp", times=[999.0, 700.3, 200.7], gamma=0.4, trig_axis=True),
    dict(path="flow", times=[0.95, 0.5], gamma=0.2, trig_axis=True),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items() if k != "times"))
def test_scheduler_loop_equals_the_trainers_sampler(case):
    """A pipeline's set_timesteps/step loop with this scheduler = consistency_sample with the same network,
    times, gamma, time axis and boundary, on the same noise."""
    path = vp_path() if case["path"] == "vp" else FlowPath()
    pred = "epsilon" if case["path"] == "vp" else "flow_prediction"
    axis = TrigFlowPath(0.5) if case.get("trig_axis") else None
    boundary = case.get("boundary")
    times = torch.tensor(case["times"], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 1, 4, 4, generator=gen)

    def denoise(x, t):
        x0, eps = to_x0_eps(network(x, path.model_timestep(t).float()), pred, x, t, path)
        if boundary is not None:
            c_skip, c_out = lcm_boundary_scalings(path, t, boundary)
            x0 = c_skip.reshape(-1, 1, 1, 1).to(x) * x + c_out.reshape(-1, 1, 1, 1).to(x) * x0
            eps = (x - path.alpha(t).reshape(-1, 1, 1, 1).to(x) * x0) / path.sigma(t).reshape(-1, 1, 1, 1).to(x)
        return x0, eps

    if axis is None:
        expected = consistency_sample(denoise, noise, times, case["gamma"], torch.Generator().manual_seed(9), path)
    else:  # as sCM samples: on TrigFlow's angle, the network seeing the equal-SNR native state x = k x_trig
        def denoise_trig(x_trig, u):
            t = path.t_from_log_snr(axis.log_snr(u))
            return denoise(x_trig * (path.alpha(t) / axis.alpha(u)).reshape(-1, 1, 1, 1).to(x_trig), t)

        angles = axis.t_from_log_snr(path.log_snr(times))
        expected = consistency_sample(denoise_trig, noise, angles, case["gamma"], torch.Generator().manual_seed(9),
                                      axis)
    replay = torch.Generator().manual_seed(9)
    draws = [torch.randn(noise.shape, generator=replay) for _ in range(len(times) - 1)]
    scheduler = FewStepConsistencyScheduler(path=path.config(), prediction_type=pred, gamma=case["gamma"],
                                            time_axis=axis.config() if axis else None, boundary_time=boundary)
    schedule = {"sigmas" if case["path"] == "flow" else "timesteps": case["times"]}
    got = pipeline_loop(scheduler, draws, initial_state(noise, path, times[0]), **schedule)
    assert torch.allclose(got, expected.float(), atol=1e-5, rtol=1e-5), float((got - expected).abs().max())


def test_config_round_trip_and_clear_errors(tmp_path):
    scheduler = FewStepConsistencyScheduler(path=vp_path().config(), prediction_type="v_prediction", gamma=0.25,
                                            time_axis=TrigFlowPath(0.5).config())
    scheduler.save_pretrained(str(tmp_path))
    loaded = FewStepConsistencyScheduler.from_pretrained(str(tmp_path))
    assert loaded.config.gamma == 0.25 and loaded.config.prediction_type == "v_prediction"
    assert isinstance(loaded.path, VPPath) and isinstance(loaded.time_axis, TrigFlowPath)
    assert torch.allclose(loaded.path.alpha(torch.tensor([500.0])), vp_path().alpha(torch.tensor([500.0])))
    loaded.set_timesteps(timesteps=[999.0, 312.5])
    assert loaded.timesteps.tolist() == [999.0, 312.5]
    with pytest.raises(ValueError, match="timesteps="):
        loaded.set_timesteps(sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="num_inference_steps=3"):
        loaded.set_timesteps(3, timesteps=[999.0, 312.5])
    with pytest.raises(ValueError, match="gamma"):
        FewStepConsistencyScheduler(gamma=1.5)
    flow = FewStepConsistencyScheduler(path=FlowPath().config(), prediction_type="flow_prediction")
    flow.set_timesteps(sigmas=[1.0, 0.5], mu=0.7)  # FLUX's pipeline passes mu: ignored, sigmas used as given
    assert flow.timesteps.tolist() == [1000.0, 500.0]
