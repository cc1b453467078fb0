"""Multistep / phased consistency: segment bookkeeping, the boundary condition at every segment edge, the sampler's
visited times, Hyper-SD's shrinking segments, and the student beating its teacher on the exact toy."""

import pytest
import torch

from fewstep.build import build_setup
from fewstep.config import load_config
from fewstep.diffusion import FlowPath, expand_like, sampling_times
from fewstep.models.tiny import tiny_denoiser
from fewstep.objectives.multistep_cm import MultistepConsistencyDistillation, phased_consistency, segment_edges
from fewstep.objectives.scm import tangent_attention
from fewstep.sampling import sample_ode
from fewstep.toy import GaussianMixtureDenoiser, ToyStudent, ring_mixture, sliced_wasserstein
from fewstep.training.trainer import Trainer


def toy_objective(segments=4, stage_steps=None, gamma=0.0, num_timesteps=12):
    teacher = GaussianMixtureDenoiser(ring_mixture(), FlowPath())
    student = ToyStudent(teacher, hidden=16, depth=2)
    with torch.no_grad():
        student.head.weight.normal_(0, 0.5)  # a student that differs from its teacher
    return MultistepConsistencyDistillation(student, teacher, num_timesteps=num_timesteps, segments=segments,
                                            stage_steps=stage_steps, gamma=gamma)


def test_segments_split_the_grid_evenly_and_each_time_maps_to_its_lower_edge():
    assert segment_edges(10, 3).tolist() == [0, 3, 7, 10]
    objective = toy_objective(segments=3, num_timesteps=10)
    lower = objective.lower_edge_index(torch.arange(10)).tolist()
    brute = [min(e for e in [3, 7, 10] if e > n) for n in range(10)]
    assert lower == brute == [3, 3, 3, 7, 7, 7, 7, 10, 10, 10]
    torch.testing.assert_close(objective.edges(), sampling_times(FlowPath(), 10)[[0, 3, 7, 10]])
    with pytest.raises(ValueError, match="segments must be"):
        segment_edges(10, 11)


@pytest.mark.parametrize("kind", ["toy", "unet2d"])  # x0-predicting toy on the flow path; VP-eps diffusers UNet
def test_phased_consistency_is_exact_at_every_edge_and_a_ddim_jump_inside(kind):
    if kind == "toy":
        net = toy_objective().student.double()
        x, cond = torch.randn(5, 2, dtype=torch.float64), None
        edges = sampling_times(net.path, 12)[[0, 3, 6, 9, 12]]
    else:
        net, cond = tiny_denoiser("unet2d", batch_size=5)
        net, x = net.double(), torch.randn(5, 4, 8, 8, dtype=torch.float64)
        edges = sampling_times(net.path, 12)[[0, 3, 6, 9, 12]]
    with torch.no_grad(), tangent_attention(net, "math"):
        for edge in edges:  # the last edge is the clean end, where an x0 network's eps is 0/0: still exact
            e = edge.expand(5).clone()
            assert torch.equal(phased_consistency(net, x, e, e, cond), x)
        t, s = edges[1].expand(5).clone(), edges[2].expand(5).clone()
        x0, eps = net.x0_eps(x, t, cond)
        expected = expand_like(net.path.alpha(s), x) * x0 + expand_like(net.path.sigma(s), x) * eps
        torch.testing.assert_close(phased_consistency(net, x, t, s, cond), expected, rtol=0, atol=0)


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_sampler_visits_exactly_the_segment_edges(gamma):
    objective = toy_objective(segments=4, gamma=gamma)
    seen: list[float] = []
    forward = objective.student.forward

    def recording(x_t, t, cond=None):
        seen.append(float(t[0]))
        return forward(x_t, t, cond)

    objective.student.forward = recording
    edges = objective.edges().tolist()
    noise = torch.randn(8, 2)
    for steps, expected in [(4, edges[:4]), (2, [edges[0], edges[2]]), (1, [edges[0]])]:
        seen.clear()
        objective.sample(noise, steps, None, torch.Generator().manual_seed(0))
        assert seen == expected
    if gamma == 0.0:  # K steps = the trained map applied edge to edge, ending with the last x0
        x = noise * objective.student.path.sigma(torch.tensor(edges[0]))
        for a, b in zip(edges[:3], edges[1:4]):
            x = phased_consistency(objective.student, x, torch.full((8,), a, dtype=torch.float64),
                                   torch.full((8,), b, dtype=torch.float64), None)
        last = objective.student.predict(x, torch.full((8,), edges[3], dtype=torch.float64))
        torch.testing.assert_close(objective.sample(noise, 4, None, torch.Generator()), last)


def test_segments_shrink_in_stages_and_resume_with_extra_state():
    objective = toy_objective(segments=[4, 2, 1], stage_steps=[2, 4])
    counts = []
    for _ in range(5):
        counts.append(objective.segments)
        objective.after_update("student")
    assert counts == [4, 4, 2, 2, 1]
    fresh = toy_objective(segments=[4, 2, 1], stage_steps=[2, 4])
    fresh.load_extra_state(objective.extra_state())
    assert fresh.segments == 1 and int(fresh.updates) == 5
    for a, b in zip(fresh.target.parameters(), objective.target.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="stage_steps"):
        toy_objective(segments=[4, 2], stage_steps=[])


def test_training_pairs_stay_inside_one_segment():
    objective = toy_objective(segments=3, num_timesteps=12)
    index = torch.arange(12)
    lower = objective.lower_edge_index(index)
    assert bool((index + 1 <= lower).all()) and bool((lower - index <= 4).all())


def test_mcm_student_beats_teacher_at_one_and_two_steps_on_the_exact_toy(tmp_path):
    config = load_config("configs/mcm_toy.yaml", [f"run.output_dir={tmp_path}", "run.trackers=[]",
                                                  "run.progress_bar=false", "run.num_samples=0",
                                                  "run.checkpoint_every=0"])
    setup = build_setup(config)
    mixture, objective = setup.teacher.mixture, setup.objective
    noise = torch.randn(1500, 2, generator=torch.Generator().manual_seed(0))
    data = mixture.sample(1500, torch.Generator().manual_seed(1))

    def student(n):
        return sliced_wasserstein(objective.sample(noise, n, None, torch.Generator().manual_seed(2)), data)

    # the teacher's own DDIM through the same two edges the 2-step student visits (= the untrained student)
    before = student(2)
    Trainer(objective, setup.data, config.run, config.optimizers).fit()
    teacher = {n: sliced_wasserstein(sample_ode(setup.teacher, noise, n), data) for n in (1, 2)}
    after = {n: student(n) for n in (1, 2)}
    assert after[1] < 0.7 * teacher[1], (after, teacher)
    assert after[2] < 0.3 * teacher[2], (after, teacher)
    assert after[2] < 0.6 * before, (after[2], before)
