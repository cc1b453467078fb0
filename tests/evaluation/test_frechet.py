"""Frechet distance against independent formulas (scipy sqrtm written out, closed forms)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from fewstep.evaluation.frechet import feature_statistics, frechet_distance, frechet_distance_detailed


def scipy_reference_fd(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula, computed independently of the package."""
    mx, my = x.sum(0) / len(x), y.sum(0) / len(y)
    cx = (x - mx).T @ (x - mx) / (len(x) - 1)
    cy = (y - my).T @ (y - my) / (len(y) - 1)
    root = linalg.sqrtm(cx @ cy).real
    return float(((mx - my) ** 2).sum() + np.trace(cx) + np.trace(cy) - 2 * np.trace(root))


def test_matches_scipy_on_random_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12))
    y = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) * 0.3 + 0.5
    ours = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert ours == pytest.approx(scipy_reference_fd(x, y), rel=1e-9)


def test_closed_form_diagonal_gaussians():
    """For commuting (diagonal) covariances FD = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2."""
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_same_features_give_zero():
    x = np.random.default_rng(1).normal(size=(500, 16))
    stats = feature_statistics(x)
    assert abs(frechet_distance(*stats, *stats)) < 1e-8


def test_feature_statistics_are_float64_unbiased():
    x = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)


def test_rank_deficient_covariances_stay_finite():
    """Fewer samples than dims (rank-deficient covariances) still give a finite, correct value."""
    sigma = np.diag([1.0, 0.0, 0.0, 0.0, 0.0])
    mu = np.zeros(5)
    assert frechet_distance(mu, sigma, mu + 1, sigma) == pytest.approx(5.0, abs=1e-6)


def test_non_finite_sqrtm_retries_with_eps_and_reports_it(monkeypatch):
    """When sqrtm(S1 S2) is not finite (old scipy on singular input, nilpotent products), retry
    with eps*I added to both covariances as pytorch-fid does, and report it."""
    import fewstep.evaluation.frechet as frechet_module

    real_sqrtm, calls = linalg.sqrtm, []

    def sqrtm_failing_once(m):
        calls.append(m)
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(frechet_module.linalg, "sqrtm", sqrtm_failing_once)
    a, b, eps = np.array([1.0, 0.0, 2.0]), np.array([0.0, 3.0, 2.0]), 1e-6
    with pytest.warns(RuntimeWarning, match="added 1e-06"):
        value = frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b), eps=eps)
    expected = 3.0 + a.sum() + b.sum() - 2 * np.sqrt((a + eps) * (b + eps)).sum()
    assert len(calls) == 2 and value == pytest.approx(expected, rel=1e-12)


def test_large_imaginary_part_raises():
    """A non-PSD 'covariance' makes sqrtm genuinely complex: that must not be silently dropped."""
    eye = np.eye(3)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(3), -eye, np.zeros(3), eye)


def test_shape_mismatch_names_the_problem():
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="2-D"):
        feature_statistics(np.zeros(5))


@pytest.mark.parametrize("n", [400, 8])  # full-rank and rank-deficient covariances
def test_eigh_method_matches_scipy_reference(n):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 12))
    y = rng.normal(size=(n, 12)) @ rng.normal(size=(12, 12)) * 0.5
    fast = frechet_distance_detailed(*feature_statistics(x), *feature_statistics(y), method="eigh")
    assert fast.distance == pytest.approx(scipy_reference_fd(x, y), rel=1e-7, abs=1e-9)
    with pytest.raises(ValueError, match="method"):
        frechet_distance(*feature_statistics(x), *feature_statistics(y), method="svd")
