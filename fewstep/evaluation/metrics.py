"""FID / FD / KID on torchmetrics' accumulators, with our Frechet core for the final number.

torchmetrics does the streaming sums (and their all-reduce across processes); the final
Frechet distance uses frechet.py so its numerical fix-ups are the reference ones
(pytorch-fid / clean-fid) and are reported. KID is torchmetrics' unbiased polynomial MMD.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from fewstep.evaluation.pipeline import FeaturePipeline


class _PrecomputedFeatures(nn.Module):
    """Identity `feature` module: lets torchmetrics accumulate features we extracted once."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class FeatureAccumulator:
    """Streaming mean / covariance (torchmetrics FID state, float64), optionally keeping features for KID."""

    def __init__(self, num_features: int, keep_features: bool = False) -> None:
        self._metric = FrechetInceptionDistance(feature=_PrecomputedFeatures(num_features))
        self._kept: list[Tensor] | None = [] if keep_features else None

    def update(self, features: Tensor) -> None:
        """Add an N x D batch of features (the sums live on the features' device)."""
        if self.num_samples == 0:
            self._metric.to(features.device)
        self._metric.update(features.double(), real=True)
        if self._kept is not None:
            self._kept.append(features.float().cpu())

    @property
    def num_samples(self) -> int:
        return int(self._metric.real_features_num_samples)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, unbiased covariance) in float64, synced across processes when distributed."""
        n = self.num_samples
        if n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {n}")
        with self._metric.sync_context():
            mean = self._metric.real_features_sum / n
            cov = (self._metric.real_features_cov_sum - n * torch.outer(mean, mean)) / (n - 1)
        return mean.cpu().numpy(), cov.cpu().numpy()

    def features(self) -> np.ndarray | None:
        """All features seen (float32), or None when not kept."""
        return None if self._kept is None else torch.cat(self._kept).numpy()


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID mean and std over random subsets (torchmetrics' unbiased cubic-polynomial MMD^2).

    subset_size is capped at the smaller set; the subsets are drawn from a private,
    seeded RNG so the global torch RNG is untouched and results repeat.
    """
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(real)} and {len(fake)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_PrecomputedFeatures(real.shape[1]), subsets=subsets,
                                         subset_size=size)
    metric.update(torch.from_numpy(np.asarray(real, np.float64)), real=True)
    metric.update(torch.from_numpy(np.asarray(fake, np.float64)), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), (float(std) if subsets > 1 else 0.0)


def torchmetrics_fid(pipeline: FeaturePipeline, **kwargs) -> FrechetInceptionDistance:
    """A torchmetrics FID that runs our pipeline (guards + protocol + extractor) on raw images.

    For users who want the torchmetrics object itself (e.g. inside a Lightning loop).
    Its compute() uses eigenvalues instead of sqrtm, so it agrees with frechet_distance to
    numerical precision on well-conditioned covariances but reports no fix-ups.
    """
    return FrechetInceptionDistance(feature=pipeline, **kwargs)


def torchmetrics_kid(pipeline: FeaturePipeline, **kwargs) -> KernelInceptionDistance:
    """A torchmetrics KID over our pipeline (see torchmetrics_fid)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(feature=pipeline, **kwargs)
