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
    """D(x) = sum_j w_j x_j^2: grad_x D = 2 w x, so R1 = mean_i sum_j (2 w_j x_ij)^2 and dR1/dw_j = mean_i 8 w_j x_ij^2."""
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    penalty = gan.r1_penalty((w * x ** 2).sum(1), x)
    expected = (2 * w.detach() * x.detach()).pow(2).sum(1).mean()
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    torch.testing.assert_close(w.grad, (8 * w.detach() * x.detach() ** 2).mean(0))


def test_approximate_r1_is_the_logit_difference():
    real, perturbed = torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0])
    assert float(gan.approximate_r1(real, perturbed)) == pytest.approx((0.25 + 1.0) / 2)


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
