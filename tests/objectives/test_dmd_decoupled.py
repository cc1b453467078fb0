"""Decoupled DMD: CA + DM with unit weights is DMD's update, CA is the written-out CFG term, the DM
replacements, and the exact-toy margin over the teacher with CFG."""

import pytest
import torch

from fewstep.build import build_setup
from fewstep.config import load_config
from fewstep.objectives import Batch
from fewstep.objectives.dmd import DistributionMatching
from fewstep.objectives.dmd_decoupled import DecoupledDMD, mmd_rbf_loss
from fewstep.sampling import sample_ode
from fewstep.toy import mmd_rbf, sliced_wasserstein
from fewstep.training.trainer import Trainer

from .helpers import QUIET, ROOT, class_conditional_toy_parts


def parts():
    teacher, student, fake = class_conditional_toy_parts()
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    return teacher, student, fake, Batch(torch.zeros(8, 2), {"class_labels": labels})


def grad_of(objective, x0, batch, seed):
    x = x0.clone().requires_grad_(True)
    loss, logs = objective.matching_loss(x, batch, torch.Generator().manual_seed(seed))
    loss.backward()
    return x.grad, logs


def test_ca_plus_dm_with_unit_weights_is_the_full_dmd_gradient():
    teacher, student, fake, batch = parts()
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1)) * 2
    full, _ = grad_of(DistributionMatching(student, teacher, fake, guidance_scale=3.0), x0, batch, 4)
    split, logs = grad_of(DecoupledDMD(student, teacher, fake, guidance_scale=3.0), x0, batch, 4)
    torch.testing.assert_close(split, full)
    assert logs["ca/grad_abs"] > 0 and logs["dm/grad_abs"] > 0
    # the CA term alone is DMD's weight times -(w - 1)(cond - uncond), written out with the exact teacher
    ca, _ = grad_of(DecoupledDMD(student, teacher, fake, guidance_scale=3.0, dm_weight=0.0), x0, batch, 4)
    g = torch.Generator().manual_seed(4)
    t = 1e-3 + (1 - 1e-3) * (0.02 + 0.96 * torch.rand(8, generator=g, dtype=torch.float64))
    x_t = (1 - t[:, None]) * x0 + t[:, None] * torch.randn(8, 2, generator=g)
    mix, labels = teacher.mixture, batch.cond["class_labels"]
    c = mix.posterior_mean(x_t.double(), 1 - t, t, labels)
    u = mix.posterior_mean(x_t.double(), 1 - t, t, torch.full_like(labels, 2))
    cfg = u + 3.0 * (c - u)
    expected = (-(3.0 - 1) * (c - u) / (x0.double() - cfg).abs().mean(1, keepdim=True) / x0.numel()).float()
    torch.testing.assert_close(ca, expected, rtol=1e-4, atol=1e-7)
    # weights scale the two terms independently
    doubled, _ = grad_of(DecoupledDMD(student, teacher, fake, guidance_scale=3.0, ca_weight=2.0), x0, batch, 4)
    torch.testing.assert_close(doubled, full + ca)


def test_separate_schedules_draw_separate_noise_levels():
    teacher, student, fake, batch = parts()
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1)) * 2
    shared, _ = grad_of(DecoupledDMD(student, teacher, fake, guidance_scale=3.0), x0, batch, 4)
    split, _ = grad_of(DecoupledDMD(student, teacher, fake, guidance_scale=3.0, ca_time_range=(0.5, 0.98),
                                    dm_time_range=(0.02, 0.5)), x0, batch, 4)
    assert (shared - split).abs().max() > 1e-5


def test_paper_schedule_caps_each_samples_ca_level_at_its_generator_input():
    teacher, student, fake, batch = parts()
    lo, hi = 1e-3, 1.0  # the toy flow path's trainable range
    paper = DecoupledDMD(student, teacher, fake, guidance_scale=3.0, ca_below_generator_time=True)
    inputs = torch.tensor([1.0, 0.5, 0.3, 1.0, 0.5, 0.3, 0.01, 1.0], dtype=torch.float64)
    t = torch.stack([paper.ca_times(8, torch.Generator().manual_seed(s), torch.device("cpu"), inputs)
                     for s in range(300)])
    top = torch.minimum(inputs, torch.tensor(lo + (hi - lo) * 0.98, dtype=torch.float64))
    bottom = torch.minimum(top, torch.tensor(lo + (hi - lo) * 0.02, dtype=torch.float64))
    assert (t <= top + 1e-12).all() and (t >= bottom - 1e-12).all()
    # uniform between the two: the mean of each column is the midpoint (std of a mean of 300 U draws: ~0.017 x width)
    torch.testing.assert_close(t.mean(0), (top + bottom) / 2, atol=0.06 * float((top - bottom).max()), rtol=0)
    # one generator time for all samples: the same draws as a fixed range ending at that time
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1)) * 2
    input_time = 0.8
    capped = DecoupledDMD(student, teacher, fake, guidance_scale=3.0, ca_below_generator_time=True)
    fixed = DecoupledDMD(student, teacher, fake, guidance_scale=3.0,
                         ca_time_range=(0.02, (input_time - lo) / (hi - lo)))
    x = x0.clone().requires_grad_(True)
    capped.matching_loss(x, batch, torch.Generator().manual_seed(4), torch.full((8,), input_time))[0].backward()
    torch.testing.assert_close(x.grad, grad_of(fixed, x0, batch, 4)[0])
    with pytest.raises(ValueError, match="input_times"):
        capped.matching_loss(x0, batch, torch.Generator().manual_seed(4))


def test_paper_schedule_trains_a_multistep_student_end_to_end(tmp_path):
    config = load_config(ROOT / "configs" / "dmd_decoupled_toy.yaml", [
        f"run.output_dir={tmp_path}", *QUIET, "run.max_steps=3", "objective.fake_score_updates=1",
        "objective.student_times=[1.0, 0.5]", "objective.ca_below_generator_time=true"])
    setup = build_setup(config)
    seen = []
    ca_times = setup.objective.ca_times
    setup.objective.ca_times = lambda n, g, d, inputs: seen.append(inputs) or ca_times(n, g, d, inputs)
    Trainer(setup.objective, setup.data, config.run, config.optimizers).fit()
    assert len(seen) == 3 and all(set(s.tolist()) <= {1.0, 0.5} for s in seen)
    assert any(len(set(s.tolist())) == 2 for s in seen)  # both generator steps are trained


def test_mmd_regulariser_matches_its_formula_and_needs_no_fake_score():
    x, y = torch.randn(40, 2), torch.randn(50, 2) + 1
    scale = torch.cdist(y, y).median()
    ours = float(mmd_rbf_loss(x, y, bandwidths=(1.0,)))
    kernel = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * scale ** 2))  # noqa: E731
    assert abs(ours - float(kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean())) < 1e-6
    assert ours > 0.05 and float(mmd_rbf_loss(y, y)) < 1e-6
    config = load_config(ROOT / "configs" / "dmd_decoupled_toy.yaml", ["objective.dm_term=mmd"])
    objective = build_setup(config).objective
    assert list(objective.trainable_networks()) == ["student"] and [p.name for p in objective.phases()] == ["generator"]


def test_decoupled_student_beats_teacher_with_cfg_on_the_exact_toy(tmp_path):
    config = load_config(ROOT / "configs" / "dmd_decoupled_toy.yaml",
                         [f"run.output_dir={tmp_path}", *QUIET, "run.max_steps=200", "objective.fake_score_updates=3"])
    setup = build_setup(config)
    mixture = setup.teacher.mixture
    labels = torch.arange(1500) % 2
    noise = torch.randn(1500, 2, generator=torch.Generator().manual_seed(0))
    data = mixture.sample(1500, torch.Generator().manual_seed(1), labels)
    Trainer(setup.objective, setup.data, config.run, config.optimizers).fit()
    cond = {"class_labels": labels}
    student = setup.objective.sample(noise, 1, cond, torch.Generator().manual_seed(2))
    teacher = sample_ode(setup.teacher, noise, 1, cond, guidance_scale=2.0)
    sw = sliced_wasserstein(student, data), sliced_wasserstein(teacher, data)
    mmd = mmd_rbf(student, data), mmd_rbf(teacher, data)
    assert sw[0] < 0.6 * sw[1] and mmd[0] < 0.5 * mmd[1], (sw, mmd)
