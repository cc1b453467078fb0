"""VSD / SwiftBrush: the generator gradient against ProlificDreamer's Eq. 9 written out with the exact teacher,
and SNOOPI's proper guidance (one random scale shared by both scores)."""

import torch

from fewstep.objectives import Batch
from fewstep.objectives.vsd import VariationalScoreDistillation

from .helpers import class_conditional_toy_parts as parts


def test_vsd_gradient_is_weighted_noise_difference():
    teacher, student, fake = parts()
    objective = VariationalScoreDistillation(student, teacher, fake, guidance_scale=2.0, time_range=(0.1, 0.9))
    labels = torch.tensor([0, 1, 1, 0, 1])
    cond = {"class_labels": labels}
    x = (torch.randn(5, 2) * 2).requires_grad_(True)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    objective.matching_loss(x, Batch(torch.zeros(5, 2), cond), g)[0].backward()
    g.set_state(state)
    t = 1e-3 + (1 - 1e-3) * (0.1 + 0.8 * torch.rand(5, generator=g, dtype=torch.float64))
    eps = torch.randn(5, 2, generator=g)
    tf = t.float()[:, None]
    x_t = (1 - tf) * x.detach() + tf * eps
    # eps of an x0 prediction on the flow path: (x_t - (1 - t) x0) / t; CFG u + w (c - u) on the teacher only
    mix = teacher.mixture
    real_c = mix.posterior_mean(x_t.double(), 1 - t, t, labels)
    real_u = mix.posterior_mean(x_t.double(), 1 - t, t, torch.full_like(labels, 2))
    real_x0 = (real_u + 2.0 * (real_c - real_u)).float()
    with torch.no_grad():
        fake_x0 = fake(x_t, t, cond)
    real_eps, fake_eps = (x_t - (1 - tf) * real_x0) / tf, (x_t - (1 - tf) * fake_x0) / tf
    expected = tf ** 2 * (real_eps - fake_eps) / x.numel()  # w(t) = sigma_t^2 = t^2
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-6)
    assert expected.abs().max() > 1e-4


def test_proper_guidance_draws_one_scale_for_both_scores():
    teacher, student, fake = parts()
    objective = VariationalScoreDistillation(student, teacher, fake, guidance_range=(2.0, 7.0))
    real, fake_scale = objective.guidance(64, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert real is fake_scale and real.shape == (64,)
    assert 2.0 <= float(real.min()) and float(real.max()) <= 7.0 and float(real.std()) > 0.5
    fixed = VariationalScoreDistillation(student, teacher, fake, guidance_scale=4.5)
    assert fixed.guidance(3, torch.Generator(), torch.device("cpu")) == (4.5, 1.0)  # SwiftBrush: teacher only
