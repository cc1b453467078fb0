"""sCM: the TrigFlow view of any teacher against the analytic posterior mean (float64), the boundary
condition, the JVP tangent against central differences, the loss equation against the Delta t -> 0 limit of
discrete consistency distillation, and the stop / resume paths of the objective."""

import math

import pytest
import torch

from fewstep.build import build_setup
from fewstep.config import apply_overrides, build_config
from fewstep.diffusion import FlowPath, TrigFlowPath, VPPath, expand_like, from_x0_eps
from fewstep.models.base import Denoiser
from fewstep.models.tiny import tiny_denoiser
from fewstep.objectives.scm import (SCMLoss, TrigFlowDenoiser, student_tangent, tangent_attention,
                                    trigflow_consistency)
from fewstep.toy import GaussianMixture, GaussianMixtureDenoiser, ToyStudent, ring_mixture
from fewstep.training.trainer import NonFiniteError, Trainer

SIGMA_D = 0.5


class Reparameterised(Denoiser):
    """The exact GMM teacher re-expressed as an eps / v / flow-velocity network on its own path."""

    def __init__(self, inner: GaussianMixtureDenoiser, prediction_type: str):
        super().__init__(inner.path, prediction_type)
        self.inner = inner

    def forward(self, x_t, t, cond=None):
        x0 = self.inner(x_t, t, cond)
        eps = (x_t - expand_like(self.path.alpha(t), x_t) * x0) / expand_like(self.path.sigma(t), x_t)
        return from_x0_eps(x0, eps, self.prediction_type, t, self.path)


def teachers(mixture):
    vp, flow = VPPath.from_scheduler_config(), FlowPath()
    return {"vp-x0": GaussianMixtureDenoiser(mixture, vp), "flow-x0": GaussianMixtureDenoiser(mixture, flow),
            "vp-eps": Reparameterised(GaussianMixtureDenoiser(mixture, vp), "epsilon"),
            "vp-v": Reparameterised(GaussianMixtureDenoiser(mixture, vp), "v_prediction"),
            "flow-velocity": Reparameterised(GaussianMixtureDenoiser(mixture, flow), "flow_prediction")}


@pytest.mark.parametrize("name", ["vp-x0", "flow-x0", "vp-eps", "vp-v", "flow-velocity"])
def test_trigflow_view_reproduces_the_teachers_x0_in_float64(name):
    mixture = ring_mixture()
    wrapped = TrigFlowDenoiser(teachers(mixture)[name], SIGMA_D)
    assert wrapped.path.name == "trigflow" and wrapped.prediction_type == "trigflow"
    reference = GaussianMixtureDenoiser(mixture, TrigFlowPath(SIGMA_D))  # the posterior mean on TrigFlow itself
    g = torch.Generator().manual_seed(0)
    t = torch.cat([torch.rand(62, generator=g, dtype=torch.float64) * 1.5 + 0.01,
                   torch.tensor([1e-4, wrapped.t_max], dtype=torch.float64)]).clamp(max=wrapped.t_max)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) * expand_like(torch.sin(t) + torch.cos(t), t)[:, None]
    x0 = wrapped.predict(x, t, None, target="sample")
    torch.testing.assert_close(x0, reference(x, t), rtol=1e-10, atol=1e-10)
    # and f = cos t x - sin t sigma_d F is that x0 (the consistency function of a teacher is its x0 prediction)
    torch.testing.assert_close(trigflow_consistency(x, t, wrapped(x, t), SIGMA_D), x0, rtol=1e-10, atol=1e-10)


def test_noisiest_trigflow_time_of_each_path():
    flow = TrigFlowDenoiser(GaussianMixtureDenoiser(ring_mixture(), FlowPath()), SIGMA_D)
    vp_path = VPPath.from_scheduler_config()
    vp = TrigFlowDenoiser(GaussianMixtureDenoiser(ring_mixture(), vp_path), SIGMA_D)
    assert flow.t_max == math.pi / 2
    last = torch.tensor(999.0, dtype=torch.float64)
    a, s = float(vp_path.alpha(last)), float(vp_path.sigma(last))
    assert vp.t_max == pytest.approx(math.atan(s / (a * SIGMA_D)), rel=1e-12) and vp.t_max < math.pi / 2
    # the state at t = pi/2 is pure noise sigma_d z: it maps to the flow model's x = z exactly
    z = torch.randn(4, 2, dtype=torch.float64)
    x_base, t_base = flow.base_state(SIGMA_D * z, torch.full((4,), math.pi / 2, dtype=torch.float64))
    torch.testing.assert_close(x_base, z)
    torch.testing.assert_close(t_base, torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["unet2d", "sd3"])  # VP-eps UNet and rectified-flow MMDiT
def test_boundary_condition_is_exact_at_t0(kind):
    base, cond = tiny_denoiser(kind, batch_size=3)
    student = TrigFlowDenoiser(base.double(), SIGMA_D)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    cond = {k: v.double() if v.is_floating_point() else v for k, v in cond.items()}
    with torch.no_grad(), tangent_attention(base, "math"):
        at_zero = trigflow_consistency(x, torch.zeros(3, dtype=torch.float64), student(x, torch.zeros(3), cond),
                                       SIGMA_D)
        away = trigflow_consistency(x, torch.full((3,), 0.3, dtype=torch.float64),
                                    student(x, torch.full((3,), 0.3), cond), SIGMA_D)
    assert torch.equal(at_zero, x)
    assert (away - x).abs().max() > 1e-3


def random_toy_student(path, scale=0.3):
    student = ToyStudent(GaussianMixtureDenoiser(ring_mixture(), path)).double()
    with torch.no_grad():
        for p in student.parameters():
            p.normal_(0, scale)
    return student, None


@pytest.mark.parametrize("kind", ["toy-flow", "toy-vp", "unet2d", "sd15", "dit", "sd3", "flux", "sana"])
def test_jvp_tangent_equals_central_difference_in_float64(kind):
    """Toy students are float64 end to end: agreement to 1e-6. diffusers' get_timestep_embedding casts the
    timestep to fp32 inside the model, which bounds the difference quotient's accuracy (~1e-4 at h = 1e-4,
    falling as h^2 above): 1e-3 there."""
    if kind.startswith("toy"):
        base, cond = random_toy_student(FlowPath() if kind == "toy-flow" else VPPath.from_scheduler_config())
        shape, h, tol = (16, 2), 1e-5, 1e-6
    else:
        base, cond = tiny_denoiser({"sd15": "unet2d_condition"}.get(kind, kind), batch_size=2)
        base, shape, h, tol = base.double(), (2, 4, 8, 8), 1e-4, 1e-3
        cond = {k: v.double() if v.is_floating_point() else v for k, v in cond.items()}
    student = TrigFlowDenoiser(base, SIGMA_D)
    g = torch.Generator().manual_seed(1)
    t = (torch.rand(shape[0], generator=g, dtype=torch.float64) * 1.3 + 0.1).clamp(max=student.t_max)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    direction = torch.randn(shape, generator=g, dtype=torch.float64)
    with tangent_attention(base, "math"):
        jvp = student_tangent(student, x, t, direction, cond, method="jvp")
        fd = student_tangent(student, x, t, direction, cond, method="finite_difference", fd_step=h)
    assert jvp.abs().max() > 1e-3
    assert float((jvp - fd).abs().max()) < tol * float(jvp.abs().max())


def gaussian_setup(tau=0.7):
    """Data N(0, tau^2 I): the exact consistency function is f(x_t, t) = tau x_t / std(x_t)."""
    mixture = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), torch.tensor(tau))
    teacher = TrigFlowDenoiser(GaussianMixtureDenoiser(mixture, FlowPath()), SIGMA_D)

    class ExactConsistency(Denoiser):
        def __init__(self):
            super().__init__(FlowPath(), "sample")

        def forward(self, x_t, t, cond=None):
            a, s = self.path.alpha(t), self.path.sigma(t)
            return x_t * expand_like(tau / (a * a * tau * tau + s * s).sqrt(), x_t)

    return mixture, teacher, TrigFlowDenoiser(ExactConsistency(), SIGMA_D)


def test_tangent_target_vanishes_on_the_exact_consistency_function():
    mixture, teacher, exact = gaussian_setup()
    t = torch.linspace(0.1, 1.5, 32, dtype=torch.float64)
    x = exact.path.add_noise(mixture.sample(32).double(), torch.randn(32, 2, dtype=torch.float64), t)
    dxt_dt = SIGMA_D * teacher(x, t)
    F = exact(x, t)
    loss = SCMLoss(SIGMA_D)
    g = loss.tangent_target(F, dxt_dt, x, t, student_tangent(exact, x, t, dxt_dt, None), warmup=1.0)
    diffusion_part = loss.tangent_target(F, dxt_dt, x, t, torch.zeros_like(x), warmup=0.0)
    assert diffusion_part.abs().max() > 1e-2  # the exact CM is not the teacher's denoiser ...
    assert g.abs().max() < 1e-7  # ... but df/dt = 0 along the teacher ODE


def test_scm_gradient_is_the_continuous_limit_of_discrete_cd():
    """Per sample, grad ||F - F^- - g||^2 =
    grad ||f(x_t, t) - f^-(x_{t - dt}, t - dt)||^2 x cos t / (dt sigma_d sin t)."""
    student, _ = random_toy_student(FlowPath(), scale=0.1)
    mixture = student.teacher.mixture
    wrapped, teacher = TrigFlowDenoiser(student, SIGMA_D), TrigFlowDenoiser(student.teacher, SIGMA_D)
    g = torch.Generator().manual_seed(2)
    t = torch.rand(256, generator=g, dtype=torch.float64) * 1.3 + 0.1
    x_t = wrapped.path.add_noise(mixture.sample(256, g).double(),
                                 torch.randn(256, 2, generator=g, dtype=torch.float64), t)
    with torch.no_grad():
        dxt_dt = SIGMA_D * teacher(x_t, t)
        cs_dF_dt = student_tangent(wrapped, x_t, t, dxt_dt, None)
    params = [p for p in student.parameters() if p.requires_grad]
    F = wrapped(x_t, t)
    g_target = SCMLoss(SIGMA_D).tangent_target(F.detach(), dxt_dt, x_t, t, cs_dF_dt, warmup=1.0)
    weight = (torch.sin(t) / torch.cos(t))[:, None]
    continuous = torch.autograd.grad((weight * (F - F.detach() - g_target) ** 2).sum(), params)
    dt = 1e-6

    def f(x, time):
        return trigflow_consistency(x, time, wrapped(x, time), SIGMA_D)

    with torch.no_grad():
        target = f(x_t - dt * dxt_dt, t - dt)
    discrete = torch.autograd.grad(((f(x_t, t) - target) ** 2).sum() / (dt * SIGMA_D), params)
    a, b = torch.cat([v.flatten() for v in continuous]), torch.cat([v.flatten() for v in discrete])
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))


def test_network_units_scale_is_dF_draw():
    """output_scale(t) = dF/d(raw output), checked by autograd through the wrapper."""
    for prediction in ["epsilon", "v_prediction", "flow_prediction", "sample"]:
        path = FlowPath() if prediction == "flow_prediction" else VPPath.from_scheduler_config()
        raw = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)

        class Constant(Denoiser):
            def __init__(self):
                super().__init__(path, prediction)

            def forward(self, x_t, t, cond=None):
                return raw

        wrapped = TrigFlowDenoiser(Constant(), SIGMA_D)
        t = torch.linspace(0.05, 1.5, 8, dtype=torch.float64)
        F = wrapped(torch.randn(8, 2, dtype=torch.float64), t)
        grad = torch.autograd.grad(F[:, 0].sum(), raw)[0][:, 0]
        torch.testing.assert_close(grad, wrapped.output_scale(t))


def toy_config(tmp_path, *extra):
    """A small sCM run on the ring (the default x0 toy student: fine for a few steps of plumbing)."""
    raw = {"run": {"output_dir": str(tmp_path), "trackers": [], "progress_bar": False, "num_samples": 0,
                   "checkpoint_every": 0, "max_grad_norm": 1.0},
           "model": {"kind": "toy_gmm", "toy": {"dataset": "ring", "path": "flow", "hidden": 32, "depth": 2}},
           "objective": {"name": "scm", "sigma_data": 1.0, "p_mean": 0.0, "weight_features": 16},
           "optimizers": {"student": {"lr": 1.0e-3}}, "data": {"kind": "toy", "batch_size": 32}}
    return build_config(apply_overrides(raw, list(extra)))


def test_nan_stops_training_with_the_scm_hint(tmp_path):
    config = toy_config(tmp_path, "run.max_steps=5")
    setup = build_setup(config)
    calls = {"n": 0}
    forward = setup.teacher.forward

    def poisoned(x_t, t, cond=None):
        calls["n"] += 1
        out = forward(x_t, t, cond)
        return out * math.nan if calls["n"] >= 3 else out

    setup.teacher.forward = poisoned
    with pytest.raises(NonFiniteError, match="fp32.*tangent_warmup_steps"):
        Trainer(setup.objective, setup.data, config.run, config.optimizers).fit()


def test_tangent_spike_stops_training(tmp_path):
    config = toy_config(tmp_path, "run.max_steps=12", "objective.spike_warmup=4", "objective.tangent_warmup_steps=0",
                        "objective.spike_factor=20")
    setup = build_setup(config)
    trainer = Trainer(setup.objective, setup.data, config.run, config.optimizers)
    original = setup.student.forward

    def after_step_8(x_t, t, cond=None):  # a student whose time dependence suddenly explodes
        out = original(x_t, t, cond)
        return out + 1e4 * torch.sin(50 * t).reshape(-1, 1).to(out) if int(setup.objective.updates) >= 8 else out

    setup.student.forward = after_step_8
    with pytest.raises(NonFiniteError, match=r"scm/tangent_spike"):
        trainer.fit()
    assert int(setup.objective.updates) == 8


def test_slow_tangent_drift_stops_training_where_the_spike_guard_does_not(tmp_path):
    config = toy_config(tmp_path, "run.max_steps=80", "objective.spike_warmup=4", "objective.tangent_warmup_steps=0",
                        "objective.drift_factor=10")
    setup = build_setup(config)
    objective = setup.objective
    original = setup.student.forward

    def drifting(x_t, t, cond=None):  # a time wiggle growing 20% per update from update 10: never a spike
        out = original(x_t, t, cond)
        amplitude = 0.0 if int(objective.updates) < 10 else 1e-3 * 1.2 ** (int(objective.updates) - 10)
        return out + amplitude * torch.sin(50 * t).reshape(-1, 1).to(out)

    setup.student.forward = drifting
    trainer = Trainer(objective, setup.data, config.run, config.optimizers)
    with pytest.raises(NonFiniteError, match=r"scm/tangent_drift") as stopped:
        trainer.fit()
    assert "'scm/tangent_spike': inf" not in str(stopped.value) and "drift_factor" in str(stopped.value)
    norms = [h["scm/tangent_norm"] for h in trainer.history]
    reference = float(objective.tangent_norm_reference)
    assert 0 < reference < 2 * max(norms[:10])  # taken when the guards start, before the wiggle grew
    assert max(a / b for a, b in zip(norms[1:], norms)) < 10  # no single update jumps: the spike guard cannot see it
    assert float(objective.tangent_norm_mean) > 10 * reference


def test_drift_guard_keeps_quiet_on_a_healthy_run_and_resumes_its_reference(tmp_path):
    def run(out, steps, resume=None):
        config = toy_config(out, f"run.max_steps={steps}", "objective.spike_warmup=4",
                            "objective.tangent_warmup_steps=4", "objective.drift_factor=10")
        setup = build_setup(config)
        Trainer(setup.objective, setup.data, config.run, config.optimizers).fit(resume=resume)
        return setup.objective

    straight = run(tmp_path / "a", 40)
    assert float(straight.tangent_norm_reference) > 0
    run(tmp_path / "b", 20)
    resumed = run(tmp_path / "b", 40, resume="latest")
    assert float(resumed.tangent_norm_reference) == float(straight.tangent_norm_reference)
    assert float(resumed.tangent_norm_mean) == float(straight.tangent_norm_mean)


def test_resume_restores_the_update_counter_and_matches_a_straight_run(tmp_path):
    def run(out, steps, resume=None):
        config = toy_config(out, f"run.max_steps={steps}", "objective.tangent_warmup_steps=4")
        setup = build_setup(config)
        trainer = Trainer(setup.objective, setup.data, config.run, config.optimizers)
        trainer.fit(resume=resume)
        return setup.objective, trainer.history

    straight, history = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed, rest = run(tmp_path / "b", 6, resume="latest")
    assert int(straight.updates) == int(resumed.updates) == 6
    assert [h["scm/warmup"] for h in rest] == [h["scm/warmup"] for h in history[3:]] == [0.75, 1.0, 1.0]
    assert [h["scm_loss"] for h in rest] == [h["scm_loss"] for h in history[3:]]
