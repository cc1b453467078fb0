"""FD on the bundled Animal-MNIST task: classifier features of generated vs held-out test images.

One place for what the demo, the benchmark and the teacher manifest measure: class-balanced
samples (sample i has class i % 10), seeded noise, images clamped to [-1, 1].
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .frechet import feature_statistics, frechet_distance

Sampler = Callable[[Tensor, dict[str, Tensor]], Tensor]  # (noise, cond) -> images in [-1, 1]


@lru_cache(maxsize=1)
def _feature_network() -> torch.nn.Module:
    from ..data.animal_mnist import load_feature_network

    return load_feature_network()


@torch.no_grad()
def classifier_features(images: Tensor, batch: int = 500) -> np.ndarray:
    net = _feature_network()
    return torch.cat([net(images[i:i + batch].clamp(-1, 1)) for i in range(0, len(images), batch)]).double().numpy()


@lru_cache(maxsize=2)
def reference_statistics(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    from ..data.animal_mnist import load_animal_mnist, to_model_range

    images, _ = load_animal_mnist(split)  # type: ignore[arg-type]
    return feature_statistics(classifier_features(to_model_range(images)))


def fd_to_test(images: Tensor) -> float:
    return frechet_distance(*feature_statistics(classifier_features(images)), *reference_statistics("test"))


@torch.no_grad()
def generate(sampler: Sampler, n: int, seed: int = 2024, batch: int = 250) -> Tensor:
    """n class-balanced samples from `sampler`, in batches, from noise seeded by `seed`."""
    from ..data.animal_mnist import NUM_CLASSES

    labels = torch.arange(n) % NUM_CLASSES
    noise = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    return torch.cat([sampler(noise[i:i + batch], {"class_labels": labels[i:i + batch]}).clamp(-1, 1).float()
                      for i in range(0, n, batch)])


SAMPLER_SEED = 7  # seeds the generator a multistep student re-noises from between its steps


@torch.no_grad()
def student_samples(objective: torch.nn.Module, steps: int, n: int, seed: int = 2024) -> Tensor:
    """n class-balanced samples of a trained student (`objective.sample` with `steps` steps) from noise seeded by
    `seed`, its re-noising drawn from a generator seeded SAMPLER_SEED: how the demo and every benchmark score a
    student."""
    generator = torch.Generator().manual_seed(SAMPLER_SEED)
    return generate(lambda z, c: objective.sample(z, steps, c, generator), n, seed)


@torch.no_grad()
def teacher_samples(teacher: torch.nn.Module, steps: int, guidance_scale: float, n: int, grid: str = "uniform",
                    seed: int = 2024) -> Tensor:
    """The baseline students are measured against: n class-balanced samples of `teacher` (a Denoiser) by Euler with
    CFG, on an even time grid by default (diffusers' flow grid spends a whole step between sigma 0.001 and 0)."""
    from ..sampling import sample_ode

    return generate(lambda z, c: sample_ode(teacher, z, steps, c, guidance_scale, solver="euler", grid=grid), n, seed)


def floor_and_ceiling(n: int = 1000) -> dict[str, float]:
    """FD of real train images (what 'as good as the data' reads) and of pure noise, vs the test split."""
    from ..data.animal_mnist import load_animal_mnist, to_model_range

    train, _ = load_animal_mnist("train")
    train = train[np.random.default_rng(0).permutation(len(train))[:n]]  # the split is stored class by class
    noise = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    return {"train_vs_test": fd_to_test(to_model_range(train)), "noise_vs_test": fd_to_test(noise)}
