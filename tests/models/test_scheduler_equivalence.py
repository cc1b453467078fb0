"""Each adapter's prediction, converted by our path math, equals diffusers' own scheduler math on the
same network output (the schedulers are the independent reference for time mapping and conversions)."""

from __future__ import annotations

import pytest
import torch

from fewstep.diffusion import FlowPath, VPPath, ddim_step
from fewstep.models import build_denoiser, path_from_scheduler_config
from fewstep.models.tiny import tiny_denoiser, tiny_scheduler, tiny_unet2d_condition


def _x(shape=(2, 4, 8, 8), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["unet2d", "dit"])
def test_vp_eps_x0_matches_ddim_scheduler(kind):
    """DDIMScheduler.step(...).pred_original_sample from the raw network == predict(target='sample')."""
    from diffusers import DDIMScheduler

    denoiser, cond = tiny_denoiser(kind)
    family = "ddpm" if kind == "unet2d" else "dit"
    sched = DDIMScheduler.from_config(tiny_scheduler(family).config, clip_sample=False)  # we never clip x0
    sched.set_timesteps(4)
    x = _x()
    for step in sched.timesteps[:2]:
        t = torch.full((2,), float(step))
        with torch.no_grad():
            raw = denoiser(x, t, cond)
            ours = denoiser.predict(x, t, cond, target="sample")
        ref = sched.step(raw, int(step), x).pred_original_sample
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_vp_v_prediction_matches_ddim_scheduler():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False)
    path, prediction_type = path_from_scheduler_config(sched)
    assert prediction_type == "v_prediction"
    denoiser = build_denoiser("unet2d_condition", tiny_unet2d_condition(), path, prediction_type)
    cond = {"encoder_hidden_states": torch.randn(2, 16, 16)}
    sched.set_timesteps(5)
    x, step = _x(), int(sched.timesteps[1])
    with torch.no_grad():
        raw = denoiser(x, torch.full((2,), float(step)), cond)
        ours = denoiser.predict(x, torch.full((2,), float(step)), cond, target="sample")
    torch.testing.assert_close(ours, sched.step(raw, step, x).pred_original_sample, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_flow_ddim_step_matches_flow_match_euler(kind):
    """FlowMatchEulerDiscreteScheduler.step's prev_sample == ddim_step(predict(...)) on sigma = timestep / 1000."""
    denoiser, cond = tiny_denoiser(kind)
    sched = tiny_scheduler(kind)
    sched.set_timesteps(4, mu=0.7 if kind == "flux" else None)
    x = _x()
    for i in range(2):
        step, sigma, sigma_next = sched.timesteps[i], sched.sigmas[i], sched.sigmas[i + 1]
        torch.testing.assert_close(step / 1000, sigma)  # the pipeline's timestep / the path time
        with torch.no_grad():
            raw = denoiser(x, sigma.expand(2), cond)
            x0, eps = denoiser.x0_eps(x, sigma.expand(2), cond)
        ref = sched.step(raw, step, x).prev_sample
        torch.testing.assert_close(ddim_step(x0, eps, sigma_next.expand(2), denoiser.path), ref, rtol=1e-5, atol=1e-5)


def test_sana_x0_matches_dpm_solver_flow_conversion():
    """DPMSolverMultistepScheduler (use_flow_sigmas, SANA's config) convert_model_output -> x0."""
    denoiser, cond = tiny_denoiser("sana")
    sched = tiny_scheduler("sana")
    sched.set_timesteps(4)
    x = _x()
    step = sched.timesteps[1]
    sched._init_step_index(step)
    sigma = sched.sigmas[sched.step_index]
    assert abs(float(step) - 1000 * float(sigma)) < 1  # DPM-Solver stores integer timesteps of 1000 * sigma
    with torch.no_grad():
        raw = denoiser(x, sigma.expand(2), cond)
        ours = denoiser.predict(x, sigma.expand(2), cond, target="sample")
    torch.testing.assert_close(ours, sched.convert_model_output(raw, sample=x), rtol=1e-5, atol=1e-5)


def test_path_from_scheduler_configs():
    from diffusers import DDPMScheduler

    for family in ("sd3", "flux", "sana"):
        path, ptype = path_from_scheduler_config(tiny_scheduler(family))
        assert isinstance(path, FlowPath) and ptype == "flow_prediction"
    path, ptype = path_from_scheduler_config(tiny_scheduler("sdxl"))  # EulerDiscrete -> same DDPM chain
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod.double()
    t = torch.tensor([0.0, 499.0, 999.0], dtype=torch.float64)
    assert isinstance(path, VPPath) and ptype == "epsilon"
    torch.testing.assert_close(path.alpha(t) ** 2, ref[t.long()])
    json_like = {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "prediction_type": "sample"}
    assert path_from_scheduler_config(json_like)[1] == "sample"
    with pytest.raises(ValueError, match="Pass path=.*prediction_type="):
        path_from_scheduler_config({"_class_name": "EDMEulerScheduler", "sigma_min": 0.002})
