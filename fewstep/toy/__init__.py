"""The analytic toy task: Gaussian-mixture data with an exact teacher and exact metrics."""

from .features import RandomFourierFeatures
from .gmm import GaussianMixture, GaussianMixtureDenoiser, image_mixture, ring_mixture
from .metrics import mmd_rbf, mode_coverage, sliced_wasserstein
from .student import ToyStudent

__all__ = ["GaussianMixture", "GaussianMixtureDenoiser", "image_mixture", "ring_mixture", "mmd_rbf",
           "mode_coverage", "RandomFourierFeatures", "sliced_wasserstein", "ToyStudent"]
