"""Toy-task metrics against scipy, direct numpy estimators and population closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import cdist

from fewstep.toy import mmd_rbf, mode_coverage, sliced_wasserstein


def _g(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- sliced Wasserstein


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sliced_w1_in_one_dimension_equals_scipy(seed):
    g = _g(seed)
    x = torch.randn(300, 1, generator=g, dtype=torch.float64)
    y = 0.5 + 2.0 * torch.rand(300, 1, generator=g, dtype=torch.float64)
    ref = stats.wasserstein_distance(x.squeeze(1).numpy(), y.squeeze(1).numpy())
    assert sliced_wasserstein(x, y, num_projections=16, p=1, seed=seed) == pytest.approx(ref, rel=1e-12)


def test_sliced_w2_in_one_dimension_equals_sorted_quantile_coupling():
    g = _g(3)
    x, y = torch.randn(200, 1, generator=g), 3 * torch.randn(200, 1, generator=g) + 1
    ref = np.sqrt(np.mean((np.sort(x.double().numpy()[:, 0]) - np.sort(y.double().numpy()[:, 0])) ** 2))
    assert sliced_wasserstein(x, y, p=2) == pytest.approx(ref, rel=1e-12)


def test_sliced_wasserstein_zero_for_identical_and_permuted_samples():
    x = torch.randn(500, 3, generator=_g(4))
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(500, generator=_g(5))]) == pytest.approx(0.0, abs=1e-12)


def test_sliced_w1_of_a_translation():
    """For y = x + delta * v each projection's W1 is |theta . v| delta, so SW1 = delta E|theta_1| = delta 2/pi
    in 2-D."""
    x = torch.randn(800, 2, generator=_g(6), dtype=torch.float64)
    v = torch.tensor([0.6, 0.8], dtype=torch.float64)
    values = [sliced_wasserstein(x, x + d * v, num_projections=2000, seed=7) for d in (0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:]))
    # 2000 random directions: Monte-Carlo standard error of E|cos| is about 0.31/sqrt(2000) = 0.007 (relative 1%)
    np.testing.assert_allclose(values, np.array([0.25, 0.5, 1.0, 2.0]) * 2 / math.pi, rtol=0.05)


def test_sliced_wasserstein_needs_equal_sizes():
    with pytest.raises(ValueError, match="equal-size"):
        sliced_wasserstein(torch.zeros(10, 2), torch.zeros(11, 2))


# ---------------------------------------------------------------- MMD

BW = (0.1, 0.3, 1.0, 3.0)


def _mmd_numpy(x: np.ndarray, y: np.ndarray, bandwidths=BW) -> float:
    """Unbiased MMD^2 written out (Gretton et al. 2012, Lemma 6): off-diagonal means of k(x,x), k(y,y), full k(x,y)."""
    def k(a, b):
        d2 = cdist(a, b, "sqeuclidean")
        return sum(np.exp(-d2 / (2 * h * h)) for h in bandwidths)
    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.sum() / (n * m))


def _mmd_population(delta: float, d: int, bandwidths=BW) -> float:
    """MMD^2 between N(0, I_d) and N(delta e_1, I_d): E exp(-|z|^2/(2h^2)), z ~ N(mu, 2 I), in closed form."""
    total = 0.0
    for h in bandwidths:
        c = (h * h / (h * h + 2)) ** (d / 2)
        total += 2 * c - 2 * c * math.exp(-delta**2 / (2 * (h * h + 2)))
    return total


def test_mmd_equals_direct_numpy_estimator():
    g = _g(8)
    x = torch.randn(120, 3, generator=g, dtype=torch.float64)
    y = 0.5 + torch.randn(90, 3, generator=g, dtype=torch.float64)
    assert mmd_rbf(x, y) == pytest.approx(_mmd_numpy(x.numpy(), y.numpy()), rel=1e-10)
    assert mmd_rbf(x, y, bandwidths=(0.5,)) == pytest.approx(_mmd_numpy(x.numpy(), y.numpy(), (0.5,)), rel=1e-10)
    img = torch.randn(20, 1, 4, 4, generator=g)  # flattened like any sample
    assert mmd_rbf(img, img.flip(0) + 0.1) == pytest.approx(
        _mmd_numpy(img.double().reshape(20, -1).numpy(), (img.flip(0) + 0.1).double().reshape(20, -1).numpy()),
        rel=1e-6)


@pytest.mark.parametrize("delta", [0.0, 1.0])
def test_mmd_is_unbiased_for_the_population_value(delta):
    g = _g(9)
    reps, n, d = 30, 150, 2
    shift = torch.zeros(d, dtype=torch.float64)
    shift[0] = delta
    vals = np.array([mmd_rbf(torch.randn(n, d, generator=g, dtype=torch.float64),
                             torch.randn(n, d, generator=g, dtype=torch.float64) + shift) for _ in range(reps)])
    target = _mmd_population(delta, d)
    se = vals.std(ddof=1) / math.sqrt(reps)
    assert abs(vals.mean() - target) < 4 * se
    if delta == 0.0:
        assert abs(vals.mean()) < 4 * se  # same distribution: ~0
    else:
        assert vals.min() > 0.5 * target  # a clear, consistently positive signal


# ---------------------------------------------------------------- mode coverage


def test_mode_coverage_on_constructed_points():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    stds = torch.tensor([0.1, 0.2, 0.1])
    r = math.sqrt(2)  # distances are measured in units of std * sqrt(dim)
    x = torch.tensor([
        [0.0, 0.0],                 # on mode 0
        [2.9 * 0.1 * r, 0.0],       # inside 3 std-units of mode 0
        [10.0, 3.1 * 0.2 * r],      # just outside mode 1 (3.1 units)
        [10.0, 2.9 * 0.2 * r],      # just inside mode 1 (its larger std)
        [5.0, 5.0],                 # between everything
    ])
    frac_near, frac_modes = mode_coverage(x, means, stds)
    assert frac_near == pytest.approx(3 / 5)
    assert frac_modes == pytest.approx(2 / 3)
    assert mode_coverage(x, means, stds, radius=100.0) == (1.0, 1.0)
    assert mode_coverage(x[:1], means, stds) == (1.0, pytest.approx(1 / 3))
