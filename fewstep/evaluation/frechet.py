"""Frechet distance between Gaussians fitted to feature sets (the math under FID / FD).

Kept in plain numpy/scipy (float64) so that every backend -- torchmetrics, clean-fid,
a user feature network -- is compared with one formula, and so the numerical fix-ups
the reference implementations apply (pytorch-fid, clean-fid) are visible, not silent.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg

# Same constants as pytorch-fid / clean-fid, so numbers agree with theirs.
DEFAULT_EPS = 1e-6
IMAG_TOLERANCE = 1e-3
EIGH_NEGATIVE_RTOL = 1e-9  # negative eigenvalues smaller than this (relative) are round-off, clipped silently


@dataclass(frozen=True)
class FrechetResult:
    """The distance plus what was done numerically to obtain it (for result files)."""

    distance: float
    eps_offset_added: float  # 0.0 unless sigma1 @ sigma2 was singular
    max_imag_dropped: float  # largest |imag| on the diagonal of sqrtm that was discarded
    extra_notes: tuple[str, ...] = ()

    @property
    def notes(self) -> list[str]:
        """Human-readable list of fix-ups, empty when the computation was clean."""
        out = list(self.extra_notes)
        if self.eps_offset_added:
            out.append(f"singular covariance product: added {self.eps_offset_added:g}*I to both covariances")
        if self.max_imag_dropped:
            out.append(f"dropped imaginary part of sqrtm (max |imag| on diagonal {self.max_imag_dropped:.2e})")
        return out


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (rows = samples) in float64, as pytorch-fid computes them."""
    feats = np.asarray(features)
    if feats.ndim != 2:
        raise ValueError(f"features must be 2-D (num_samples, dim), got shape {feats.shape}; flatten or pool first")
    if feats.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to estimate a covariance, got {feats.shape[0]}")
    feats = feats.astype(np.float64, copy=False)
    if not np.isfinite(feats).all():
        raise ValueError("features contain NaN/Inf; check the generator output and the feature extractor input range")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _check_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> None:
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must be 1-D with equal shape, got {mu1.shape} and {mu2.shape}")
    dim = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (dim, dim):
            raise ValueError(f"{name} must have shape ({dim}, {dim}) to match the means, got {s.shape}")


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> tuple[float, list[str]]:
    """Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)): symmetric eigensolvers only, ~4x faster
    than sqrtm at 2048-d; round-off negative eigenvalues are clipped to 0 and reported."""
    w1, v1 = np.linalg.eigh(sigma1)
    root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    notes = []
    beyond_round_off = eig < -EIGH_NEGATIVE_RTOL * np.abs(eig).max(initial=0.0)
    if beyond_round_off.any():
        notes.append(f"clipped {int(beyond_round_off.sum())} negative eigenvalues of S1^1/2 S2 S1^1/2 "
                     f"(min {eig.min():.2e})")
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum()), notes


def frechet_distance_detailed(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = DEFAULT_EPS,
    method: str = "sqrtm",
) -> FrechetResult:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), with the reference fix-ups recorded.

    method="sqrtm" (default) is pytorch-fid / clean-fid line for line: if sqrtm(S1 S2) is not
    finite, retry with eps*I added to both covariances; a complex result with a negligible
    imaginary diagonal keeps its real part; a large imaginary part is an error.
    method="eigh" gives the same value from symmetric eigenvalues, faster on CPU.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    _check_stats(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    if method == "eigh":
        tr_root, notes = _trace_sqrt_product_eigh(sigma1, sigma2)
        dist = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_root)
        return FrechetResult(dist, 0.0, 0.0, tuple(notes))
    if method != "sqrtm":
        raise ValueError(f"method must be 'sqrtm' (reference) or 'eigh' (faster), got {method!r}")
    eps_added = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular input; we handle it below
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        eps_added = eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise FloatingPointError("sqrtm of the covariance product is not finite even after adding eps*I; "
                                     "check the features for NaN/Inf or increase eps")
    max_imag = 0.0
    if np.iscomplexobj(covmean):
        diag_imag = np.abs(np.diagonal(covmean).imag)
        max_imag = float(diag_imag.max()) if diag_imag.size else 0.0
        if not np.allclose(diag_imag, 0, atol=IMAG_TOLERANCE):
            raise ValueError(f"sqrtm has a large imaginary component ({max_imag:.3g} > {IMAG_TOLERANCE}); "
                             "the covariances are badly conditioned -- use more samples")
        covmean = covmean.real
    dist = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return FrechetResult(distance=dist, eps_offset_added=eps_added, max_imag_dropped=max_imag)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = DEFAULT_EPS,
    method: str = "sqrtm",
) -> float:
    """Frechet distance as a float; any numerical fix-up is reported with a RuntimeWarning.

    Use frechet_distance_detailed to get the fix-ups as data (the harness records them).
    """
    result = frechet_distance_detailed(mu1, sigma1, mu2, sigma2, eps=eps, method=method)
    for note in result.notes:
        warnings.warn(f"frechet_distance: {note}", RuntimeWarning, stacklevel=2)
    return result.distance
