"""The analytic Gaussian-mixture teacher: Tweedie via autograd, closed forms, sampling moments, scipy densities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from fewstep.diffusion import FlowPath, VPPath, sampling_times, solver_step
from fewstep.toy import (GaussianMixture, GaussianMixtureDenoiser, image_mixture, mode_coverage, ring_mixture,
                         sliced_wasserstein)


def _random_mixture(seed: int = 0, k: int = 5, d: int = 3, classes: bool = False) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(k, d, generator=g, dtype=torch.float64)
    stds = 0.2 + torch.rand(k, generator=g, dtype=torch.float64)
    weights = 0.2 + torch.rand(k, generator=g, dtype=torch.float64)
    cls = torch.arange(k) % 2 if classes else None
    return GaussianMixture(means, stds, weights, component_classes=cls)


def _noisy_density(mix: GaussianMixture, a: torch.Tensor, s: torch.Tensor, keep: torch.Tensor | None = None):
    """p_t(x) = sum_k w_k N(x; a mu_k, (a^2 tau_k^2 + s^2) I), built with torch.distributions, one per sample."""
    w = mix.weights if keep is None else mix.weights * keep
    B = a.shape[0]
    loc = a.reshape(B, 1, 1) * mix.means[None]  # (B, K, D)
    scale = torch.sqrt(a.reshape(B, 1, 1) ** 2 * mix.stds.reshape(1, -1, 1) ** 2 + s.reshape(B, 1, 1) ** 2)
    comps = Independent(Normal(loc, scale.expand_as(loc)), 1)
    # logits, not probs: Categorical(probs=...) clamps a zero weight up to float eps
    return MixtureSameFamily(Categorical(logits=torch.log(w / w.sum()).expand(B, -1)), comps)


def _tweedie(mix, x, a, s, keep=None):
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_noisy_density(mix, a, s, keep).log_prob(x).sum(), x)
    return (x + s.reshape(-1, 1) ** 2 * grad).detach() / a.reshape(-1, 1)


def _flow_coeffs(n: int, seed: int):
    t = 0.03 + 0.94 * torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return 1 - t, t


@pytest.mark.parametrize("mix", [_random_mixture(0), ring_mixture(8), _random_mixture(1, k=3, d=1)],
                         ids=["random3d", "ring", "random1d"])
def test_posterior_mean_is_tweedie(mix):
    a, s = _flow_coeffs(64, seed=1)
    g = torch.Generator().manual_seed(2)
    x0 = mix.sample(64, g).double().reshape(64, -1)
    x_t = a[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    ours = mix.posterior_mean(x_t, a, s)
    torch.testing.assert_close(ours, _tweedie(mix, x_t, a, s), rtol=1e-9, atol=1e-9)


def test_posterior_mean_tweedie_on_vp_path_image_shaped():
    mix = image_mixture(num_modes=4, shape=(1, 4, 4), std=0.3, seed=3)
    path = VPPath.from_scheduler_config()
    t = torch.tensor([5.0, 120.5, 400.0, 850.25, 999.0], dtype=torch.float64)
    a, s = path.alpha(t), path.sigma(t)
    g = torch.Generator().manual_seed(4)
    x_t = (a.reshape(-1, 1, 1, 1) * mix.sample(5, g).double()
           + s.reshape(-1, 1, 1, 1) * torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64))
    ours = mix.posterior_mean(x_t, a, s)
    assert ours.shape == (5, 1, 4, 4)
    torch.testing.assert_close(ours.reshape(5, -1), _tweedie(mix, x_t.reshape(5, -1), a, s), rtol=1e-8, atol=1e-8)


def test_single_component_is_gaussian_closed_form():
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    tau = 0.7
    mix = GaussianMixture(mu, torch.tensor(tau, dtype=torch.float64))
    a, s = _flow_coeffs(16, seed=5)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    gain = (a * tau**2 / (a**2 * tau**2 + s**2))[:, None]
    torch.testing.assert_close(mix.posterior_mean(x, a, s), mu + gain * (x - a[:, None] * mu), rtol=1e-12, atol=1e-12)


def test_class_conditional_posterior_restricts_to_class_components():
    mix = _random_mixture(7, k=6, d=2, classes=True)  # classes 0,1,0,1,0,1
    assert mix.num_classes == 2
    a, s = _flow_coeffs(32, seed=8)
    x = 2 * torch.randn(32, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    labels = torch.arange(32) % 3  # 0, 1 and the null class 2
    ours = mix.posterior_mean(x, a, s, class_labels=labels)
    for c in range(2):
        m = labels == c
        keep = (mix.component_classes == c).double()
        torch.testing.assert_close(ours[m], _tweedie(mix, x[m], a[m], s[m], keep), rtol=1e-9, atol=1e-9)
        sub = GaussianMixture(mix.means[keep.bool()], mix.stds[keep.bool()], mix.weights[keep.bool()])
        torch.testing.assert_close(ours[m], sub.posterior_mean(x[m], a[m], s[m]), rtol=1e-12, atol=1e-12)
    null = labels == 2
    torch.testing.assert_close(ours[null], mix.posterior_mean(x[null], a[null], s[null]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[null], _tweedie(mix, x[null], a[null], s[null]), rtol=1e-9, atol=1e-9)


def test_sample_moments_match_mixture():
    mix = _random_mixture(10, k=4, d=3)
    n = 40000
    x = mix.sample(n, torch.Generator().manual_seed(11)).double()
    assert x.shape == (n, 3)
    w, mu, var = mix.weights, mix.means, mix.stds**2
    mean = (w[:, None] * mu).sum(0)
    cov = (w[:, None, None] * (var[:, None, None] * torch.eye(3, dtype=torch.float64)
                               + mu[:, :, None] * mu[:, None, :])).sum(0)
    cov = cov - mean[:, None] * mean[None, :]
    se_mean = (torch.diagonal(cov) / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se_mean).all()
    c = x - x.mean(0)
    prods = c[:, :, None] * c[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)  # CLT standard error of each covariance entry
    assert ((prods.mean(0) - cov).abs() < 5 * se_cov).all()


def test_sample_component_frequencies_and_classes():
    means = ring_mixture(6).means
    weights = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    mix = GaussianMixture(means, torch.tensor(0.05), weights, component_classes=torch.tensor([0, 1, 2, 0, 1, 2]))
    n = 6000
    x = mix.sample(n, torch.Generator().manual_seed(12)).double()
    nearest = torch.cdist(x, means).argmin(1)
    counts = torch.bincount(nearest, minlength=6).numpy()
    assert stats.chisquare(counts, (weights / weights.sum()).numpy() * n).pvalue > 1e-3
    labels = torch.tensor([1, 3] * 200)  # class 1 and the null class
    xc = mix.sample(400, torch.Generator().manual_seed(13), class_labels=labels).double()
    near = torch.cdist(xc, means).argmin(1)
    assert (mix.component_classes[near[labels == 1]] == 1).all()
    assert len(set(near[labels == 3].tolist())) == 6  # the null class draws from every component


@pytest.mark.parametrize("mix", [_random_mixture(14), image_mixture(num_modes=3, shape=(1, 2, 2), std=0.4)],
                         ids=["random3d", "image"])
def test_log_prob_matches_scipy(mix):
    x = mix.sample(50, torch.Generator().manual_seed(15))
    flat = x.double().reshape(50, -1).numpy()
    d = flat.shape[1]
    comp = np.stack([stats.multivariate_normal(mean=m, cov=sd**2 * np.eye(d)).logpdf(flat)
                     for m, sd in zip(mix.means.numpy(), mix.stds.numpy())], axis=1)
    ref = logsumexp(comp + np.log(mix.weights.numpy()), axis=1)
    np.testing.assert_allclose(mix.log_prob(x).numpy(), ref, rtol=1e-10)


def test_ring_and_image_mixture_construction():
    ring = ring_mixture(num_modes=8, radius=2.0, std=0.08, num_classes=3)
    np.testing.assert_allclose(ring.means.norm(dim=1).numpy(), 2.0, rtol=1e-12)
    np.testing.assert_allclose(ring.means[2].numpy(), [0.0, 2.0], atol=1e-12)
    assert ring.component_classes.tolist() == [0, 1, 2, 0, 1, 2, 0, 1] and ring.num_classes == 3
    img = image_mixture(num_modes=5, shape=(2, 8, 8), std=0.1, seed=1)
    assert img.event_shape == (2, 8, 8) and img.dim == 128
    assert img.means.min() >= -0.8 and img.means.max() <= 0.8
    torch.testing.assert_close(image_mixture(5, (2, 8, 8), 0.1, seed=1).means, img.means, rtol=0, atol=0)


def test_denoiser_wraps_posterior_mean_on_its_path():
    mix = ring_mixture(8, num_classes=2)
    path = FlowPath()
    den = GaussianMixtureDenoiser(mix, path)
    assert den.prediction_type == "sample"
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    cond = {"class_labels": torch.tensor([0, 1, 0, 1, 0, 1])}
    torch.testing.assert_close(den(x, t, cond), mix.posterior_mean(x, 1 - t, t, cond["class_labels"]))
    assert den.null_cond(cond)["class_labels"].tolist() == [2] * 6
    torch.testing.assert_close(den(x, t, den.null_cond(cond)), mix.posterior_mean(x, 1 - t, t))
    eps = den.predict(x, t, cond, target="epsilon")
    torch.testing.assert_close((1 - t)[:, None] * den(x, t, cond) + t[:, None] * eps, x)


def test_exact_teacher_pf_ode_transports_noise_to_the_mixture():
    """Heun on the exact denoiser from pure noise reproduces the mixture (sliced W at the sampling-noise floor)."""
    mix = ring_mixture(8, radius=2.0, std=0.15, num_classes=2)
    path = FlowPath()
    den = GaussianMixtureDenoiser(mix, path)
    n = 2000
    g = torch.Generator().manual_seed(17)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    steps = 64
    times = sampling_times(path, steps, shift=3.0).double()
    denoise = den.denoise_fn()
    for i in range(steps):
        x = solver_step("heun", x, times[i].expand(n), times[i + 1].expand(n), denoise, path)
    ref1, ref2 = mix.sample(n, g).double(), mix.sample(n, g).double()
    floor = sliced_wasserstein(ref1, ref2)
    assert sliced_wasserstein(x, ref1) < 2 * floor
    frac_near, frac_modes = mode_coverage(x, mix.means, mix.stds)
    assert frac_near > 0.99 and frac_modes == 1.0
    # spread around the modes: |x - nearest mode|^2 has mean d * tau^2 (modes are far apart relative to tau)
    d2 = torch.cdist(x, mix.means).min(1).values ** 2
    assert abs(d2.mean().item() - 2 * 0.15**2) < 4 * d2.std().item() / math.sqrt(n)
    # equal mode weights: chi-square on nearest-mode counts
    counts = torch.bincount(torch.cdist(x, mix.means).argmin(1), minlength=8).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    # class-conditional: every sample lands on a mode of its class
    labels = torch.arange(400) % 2
    xc = torch.randn(400, 2, generator=g, dtype=torch.float64)
    denoise_c = den.denoise_fn({"class_labels": labels})
    for i in range(steps):
        xc = solver_step("heun", xc, times[i].expand(400), times[i + 1].expand(400), denoise_c, path)
    nearest = torch.cdist(xc, mix.means).argmin(1)
    assert (mix.component_classes[nearest] == labels).all()
