"""torchmetrics-backed FID/KID against direct computations on the same features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.evaluation.frechet import feature_statistics, frechet_distance
from fewstep.evaluation.metrics import FeatureAccumulator, kernel_inception_distance, torchmetrics_fid
from fewstep.evaluation.pipeline import FeaturePipeline


def direct_unbiased_poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    off_diag = lambda k: k.sum() - np.trace(k)  # noqa: E731
    return float(off_diag(kxx) / (m * (m - 1)) + off_diag(kyy) / (m * (m - 1)) - 2 * kxy.sum() / m**2)


def test_accumulator_matches_numpy_mean_and_cov():
    rng = np.random.default_rng(0)
    feats = rng.normal(loc=3.0, size=(300, 7))
    acc = FeatureAccumulator(7, keep_features=True)
    for chunk in np.array_split(feats, 5):
        acc.update(torch.from_numpy(chunk))
    mu, sigma = acc.statistics()
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(acc.features(), feats.astype(np.float32))


def test_torchmetrics_fid_with_our_pipeline_equals_direct(feature_net, uint8_images):
    """torchmetrics' FID over our pipeline (no torch-fidelity involved) equals frechet_distance."""
    probe_calls = []
    feature_net.register_forward_hook(lambda *a: probe_calls.append(1))
    pipeline = FeaturePipeline(feature_net, "uint8", "clean")
    metric = torchmetrics_fid(pipeline)
    assert probe_calls == []  # num_features was read, no dummy 299x299 probe through the network
    real, fake = uint8_images[:32], (uint8_images[32:].int() // 2).to(torch.uint8)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.no_grad():
        f_real, f_fake = pipeline(real).numpy(), pipeline(fake).numpy()
    direct = frechet_distance(*feature_statistics(f_fake), *feature_statistics(f_real))
    assert float(metric.compute()) == pytest.approx(direct, rel=1e-6)


def test_kid_matches_direct_unbiased_mmd():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 5)), rng.normal(loc=0.3, size=(40, 5))
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=40)  # full sets: every subset identical
    assert mean == pytest.approx(direct_unbiased_poly_mmd(x, y), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_subsets_are_seeded_and_leave_global_rng_alone():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = kernel_inception_distance(x, y, subsets=5, subset_size=20, seed=7)
    assert torch.rand(1) == before
    assert kernel_inception_distance(x, y, subsets=5, subset_size=20, seed=7) == first
