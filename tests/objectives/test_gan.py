"""GAN pieces: hinge / R1 / approximate R1 against autograd of closed forms, and the stability guard."""

import math
import warnings

import pytest
import torch

from fewstep.objectives import gan


def test_hinge_losses_are_the_closed_forms():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.3, 1.5])
    assert float(gan.hinge_discriminator_loss(real, fake)) == pytest.approx((0 + 0.5 + 2.0) / 3 + (0 + 1.3 + 2.5) / 3)
    assert float(gan.hinge_generator_loss(fake)) == pytest.approx(-(-2.0 + 0.3 + 1.5) / 3)


def test_r1_is_the_squared_input_gradient_and_trains_the_discriminator():
    """D(x) = sum_j w_j x_j^2: grad_x D = 2 w x, so R1 = mean_i sum_j (2 w_j x_ij)^2 and
    dR1/dw_j = mean_i 8 w_j x_ij^2."""
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    penalty = gan.r1_penalty((w * x ** 2).sum(1), x)
    expected = (2 * w.detach() * x.detach()).pow(2).sum(1).mean()
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    torch.testing.assert_close(w.grad, (8 * w.detach() * x.detach() ** 2).mean(0))


def test_approximate_r1_is_the_logit_difference_on_the_r1_scale():
    real, perturbed = torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0])
    assert float(gan.approximate_r1(real, perturbed, sigma=0.5)) == pytest.approx((0.25 + 1.0) / 2 / 0.25)


def test_approximate_r1_estimates_the_exact_penalty():
    """D(x) = tanh(w.x): over many perturbations (D(x) - D(x + sigma n))^2 / sigma^2 -> ||grad D||^2 as sigma -> 0,
    so one r1_weight means the same penalty in both forms (the old form was sigma^2 = 1e-4 times weaker)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g) / 4
    x = torch.randn(1, 16, generator=g).repeat(20000, 1).requires_grad_(True)
    real = torch.tanh(x @ w)
    exact = gan.r1_penalty(real, x)
    sigma = 1e-3
    perturbed = torch.tanh((x + sigma * torch.randn(x.shape, generator=g)) @ w)
    approx = gan.approximate_r1(real, perturbed, sigma)
    assert float(approx.detach()) == pytest.approx(float(exact.detach()), rel=0.03)


def test_per_position_head_averages_to_the_pooled_head_and_spectral_norm_bounds_it():
    torch.manual_seed(0)
    pooled = gan.DiscriminatorHead(8, time_dim=4, cond_dim=3)
    per_position = gan.DiscriminatorHead(8, time_dim=4, cond_dim=3, per_position=True)
    per_position.load_state_dict(pooled.state_dict())
    for layer in (pooled.film, pooled.projection):  # non-zero conditioning, so FiLM and projection count too
        torch.nn.init.normal_(layer.weight)
    per_position.load_state_dict(pooled.state_dict())
    features, time_emb, cond_emb = torch.randn(2, 8, 5, 3), torch.randn(2, 4), torch.randn(2, 3)
    logits = per_position(features, time_emb, cond_emb)
    assert logits.shape == (2, 15)  # one per position of the 5 x 3 grid
    torch.testing.assert_close(logits.mean(1), pooled(features, time_emb, cond_emb))
    # the hinge on each position is not the hinge on the mean: a sample half right, half wrong still trains
    assert float(gan.hinge_discriminator_loss(torch.tensor([[3.0, -1.0]]), torch.tensor([[-3.0, 1.0]]))) == 2.0
    normed = gan.DiscriminatorHead(8, spectral_norm=True)
    with torch.no_grad():
        for _ in range(20):  # power iterations run on training-mode forwards
            normed(features)
    assert float(torch.linalg.matrix_norm(normed.out.weight, ord=2)) == pytest.approx(1.0, rel=1e-3)


def test_collapse_monitor_flags_diversity_collapse_once():
    monitor = gan.CollapseMonitor(diversity_ratio=0.1)
    assert monitor.check_diversity(torch.tensor(2.0)) == {}
    assert monitor.check_diversity(torch.tensor(0.5)) == {}
    with pytest.warns(RuntimeWarning, match="generator collapse"):
        assert monitor.check_diversity(torch.tensor(0.1)) == {"gan/collapse": torch.tensor(1.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, then only logged
        assert "gan/collapse" in monitor.check_diversity(torch.tensor(0.1))


def test_collapse_monitor_flags_a_dominant_discriminator_and_can_stop():
    monitor = gan.CollapseMonitor(patience=3, stop=True)
    assert monitor.check_accuracy(torch.tensor(1.0)) == {} and monitor.check_accuracy(torch.tensor(1.0)) == {}
    assert monitor.check_accuracy(torch.tensor(0.6)) == {}  # the streak resets
    monitor.check_accuracy(torch.tensor(1.0))
    monitor.check_accuracy(torch.tensor(1.0))
    with pytest.warns(RuntimeWarning, match="discriminator separated"):
        flagged = monitor.check_accuracy(torch.tensor(0.995))
    assert math.isinf(float(flagged["gan/discriminator_wins"]))


def test_collapse_monitor_state_round_trip():
    fresh = gan.CollapseMonitor()
    assert math.isnan(float(fresh.state()["initial_diversity"]))
    monitor = gan.CollapseMonitor(patience=10)
    monitor.check_diversity(torch.tensor(2.5))
    for _ in range(3):
        monitor.check_accuracy(torch.tensor(1.0))
    restored = gan.CollapseMonitor(patience=10)
    restored.load_state(monitor.state())
    assert restored.initial_diversity == 2.5 and restored.dominated_updates == 3
    restored.load_state(fresh.state())
    assert restored.initial_diversity is None
