"""Phased DMD: the subinterval score-matching target against the Gaussian-mixture closed form, routing of the
experts, phase-by-phase training, and the exact-toy margin (and diversity) against the teacher and DMD2."""


import pytest
import torch

from fewstep.build import build_setup
from fewstep.config import load_config
from fewstep.diffusion import FlowPath, VPPath, forward_noise
from fewstep.objectives import Batch
from fewstep.objectives.dmd_phased import PhasedDMD, PhasedStudent, subinterval_posterior_mean
from fewstep.objectives.fake_score import build_fake_score
from fewstep.sampling import sample_ode
from fewstep.toy import GaussianMixture, GaussianMixtureDenoiser, ToyStudent, mode_coverage, ring_mixture, \
    sliced_wasserstein
from fewstep.training.trainer import Trainer

from .helpers import QUIET, ROOT


def mixture_at(mixture: GaussianMixture, path, s: torch.Tensor) -> GaussianMixture:
    """The law of x_s = a_s x0 + s_s eps: again a mixture, means a_s mu_k, stds sqrt(a_s^2 tau_k^2 + s_s^2)."""
    a, sig = path.alpha(s), path.sigma(s)
    return GaussianMixture(a * mixture.means, (a * a * mixture.stds ** 2 + sig * sig).sqrt())


@pytest.mark.parametrize("path,s,t", [(FlowPath(), 0.3, 0.7), (FlowPath(), 0.5, 0.55),
                                      (VPPath.from_scheduler_config(), 250.0, 600.0)])
def test_subinterval_target_is_the_closed_form_posterior_mean(path, s, t):
    mixture = ring_mixture()
    teacher = GaussianMixtureDenoiser(mixture, path)
    n = 256
    s_, t_ = torch.full((n,), s, dtype=torch.float64), torch.full((n,), t, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x_s = mixture_at(mixture, path, s_[0]).sample(n, g).double()
    x_t = forward_noise(x_s, s_, t_, torch.randn(n, 2, generator=g, dtype=torch.float64), path)
    # closed form: x_t = r x_s + sigma_{t|s} n with x_s a Gaussian mixture, so E[x_s | x_t] is its posterior mean
    r = path.alpha(t_) / path.alpha(s_)
    var = path.sigma(t_) ** 2 - (r * path.sigma(s_)) ** 2
    closed = mixture_at(mixture, path, s_[0]).posterior_mean(x_t, r, var.sqrt())
    ours = subinterval_posterior_mean(x_t, teacher(x_t, t_), s_, t_, path)
    torch.testing.assert_close(ours.double(), closed, rtol=1e-4, atol=1e-4)
    naive = teacher(x_t, t_)  # "treat x_s as clean data": the wrong target
    assert (naive - closed).abs().max() > 0.05


def test_subinterval_loss_is_stationary_at_the_closed_form_only():
    """The fake score's loss ||m(x_t) - x_s||^2 with x_t diffused from x_s: its gradient along any function of
    x_t, here m + A x_t, is -2 E[(x_s - m) x_t^T], zero at E[x_s | x_t] (orthogonality) and not at E[x0 | x_t]."""
    path, mixture = FlowPath(), ring_mixture()
    teacher = GaussianMixtureDenoiser(mixture, path)
    n, s, t = 200_000, 0.3, 0.6
    s_, t_ = torch.full((n,), s, dtype=torch.float64), torch.full((n,), t, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x_s = mixture_at(mixture, path, s_[0]).sample(n, g).double()
    x_t = forward_noise(x_s, s_, t_, torch.randn(n, 2, generator=g, dtype=torch.float64), path)
    x0_hat = teacher(x_t, t_)
    m = subinterval_posterior_mean(x_t, x0_hat, s_, t_, path).double()
    stationary = ((x_s - m)[:, :, None] * x_t[:, None, :]).mean(0)
    off = ((x_s - x0_hat)[:, :, None] * x_t[:, None, :]).mean(0)
    assert stationary.abs().max() < 0.02, stationary
    assert off.abs().max() > 0.1, off


def phased_parts(boundaries=(0.7, 0.4)):
    teacher = GaussianMixtureDenoiser(ring_mixture(), FlowPath())
    student = ToyStudent(teacher, hidden=16, depth=2)
    fake = build_fake_score(teacher, ToyStudent(teacher, hidden=16, depth=2))
    with torch.no_grad():  # a fake score that differs from the real one, so the generator gets gradients
        fake.network.head.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    return teacher, PhasedDMD(student, teacher, fake, boundaries=list(boundaries), steps_per_phase=2)


def test_experts_answer_only_for_their_own_interval():
    teacher, objective = phased_parts()
    mixture: PhasedStudent = objective.student
    with torch.no_grad():
        for k, expert in enumerate(mixture.experts):
            expert.head.bias.fill_(10.0 * (k + 1))  # expert k adds 10 (k + 1) to the teacher's x0
    t = torch.tensor([1.0, 0.9, 0.71, 0.7, 0.5, 0.41, 0.4, 0.01], dtype=torch.float64)
    x = torch.randn(8, 2)
    offset = (mixture(x, t) - teacher(x, t))[:, 0]
    expected = torch.tensor([10.0, 10, 10, 20, 20, 20, 30, 30])  # (0.7, 1] -> 0, (0.4, 0.7] -> 1, (0, 0.4] -> 2
    torch.testing.assert_close(offset, expected)
    assert mixture.expert_index(t).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_each_phase_trains_only_its_expert_on_the_earlier_experts_outputs():
    teacher, objective = phased_parts()
    batch = Batch(ring_mixture().sample(16, torch.Generator().manual_seed(0)))
    experts = objective.student.experts
    for phase in range(3):
        assert objective.phase == phase
        objective.zero_grad(set_to_none=True)
        loss, logs = objective.loss("generator", batch, torch.Generator().manual_seed(5))
        loss.backward()
        with_grad = [k for k, e in enumerate(experts) if any(p.grad is not None and p.grad.abs().sum() > 0
                                                             for p in e.parameters())]
        assert with_grad == [phase] and logs["phase"] == phase
        fake_loss, _ = objective.loss("fake_score", batch, torch.Generator().manual_seed(5))
        assert torch.isfinite(fake_loss)
        for _ in range(2):
            objective.after_update("generator")
    # phase 1's input is expert 0's output at b_1 = 0.7: it changes when expert 0 does
    objective.generator_updates.fill_(2)
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    before = objective.rollout(noise, 1, None, torch.Generator())
    with torch.no_grad():
        experts[0].head.bias.fill_(1.0)
    after = objective.rollout(noise, 1, None, torch.Generator())
    assert (after - before).abs().min() > 0.1
    # written out on the flow path: x_1 = noise; x0 = teacher + 1 (the re-biased head); DDIM keeps eps = x_1
    x0 = teacher(noise, torch.ones(16, dtype=torch.float64)) + 1.0
    torch.testing.assert_close(after, (1 - 0.7) * x0 + 0.7 * noise)
    state = objective.extra_state()
    objective.generator_updates.zero_()
    objective.load_extra_state(state)
    assert objective.phase == 1


def test_phased_students_beat_the_teacher_and_keep_mode_balance_better_than_dmd2(tmp_path):
    """4 phases vs the teacher's 4-step Euler and vs DMD2's 4-step generator (backward simulation = stochastic
    gradient truncation) with the same budget: 160 generator updates (40 per phase), 3 fake-score updates each."""
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    results = {}
    budget = ["run.max_steps=160", "objective.fake_score_updates=3"]
    dmd2_4step = ["objective.student_times=[1.0,0.75,0.5,0.25]", "objective.gan.generator_weight=0",
                  "objective.gan.discriminator_weight=0"]
    for name, recipe, extra in [("phased", "dmd_phased_toy.yaml", ["objective.steps_per_phase=40"]),
                                ("dmd2", "dmd2_toy.yaml", dmd2_4step)]:
        config = load_config(ROOT / "configs" / recipe, [f"run.output_dir={tmp_path / name}", *QUIET, *budget, *extra])
        setup = build_setup(config)
        Trainer(setup.objective, setup.data, config.run, config.optimizers).fit()
        results[name] = setup.objective.sample(noise, 4, None, torch.Generator().manual_seed(2))
    mixture = setup.teacher.mixture
    data = mixture.sample(2000, torch.Generator().manual_seed(1))
    teacher = sample_ode(setup.teacher, noise, 4)
    sw = {k: sliced_wasserstein(v, data) for k, v in {**results, "teacher": teacher}.items()}
    balance = {k: mode_imbalance(v, mixture) for k, v in {**results, "teacher": teacher}.items()}
    assert sw["phased"] < 0.8 * sw["teacher"], sw
    assert mode_coverage(results["phased"], mixture.means, mixture.stds)[1] == 1.0
    assert balance["phased"] < 0.5 * balance["dmd2"], balance
    assert sw["phased"] < sw["dmd2"], sw


def mode_imbalance(x: torch.Tensor, mixture: GaussianMixture, radius: float = 3.0) -> float:
    """Total variation between the mode weights of the samples (nearest mode, within radius std) and the data's."""
    d = torch.cdist(x.double(), mixture.means) / mixture.stds.reshape(1, -1) / 2 ** 0.5
    near = d.min(1).values < radius
    counts = torch.bincount(d.argmin(1)[near], minlength=len(mixture.means)).double()
    return float(0.5 * (counts / counts.sum() - mixture.weights).abs().sum())
