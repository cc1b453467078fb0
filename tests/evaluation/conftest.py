"""Shared fixtures: a tiny deterministic feature network (FD) and small image sets."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from fewstep.evaluation.features import FeatureNetwork  # noqa: E402


def make_feature_net(seed: int = 0, channels: int = 1, size: int = 8, dim: int = 6) -> FeatureNetwork:
    """A fixed random projection + tanh: cheap, deterministic features for 8x8 images."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * size * size, dim), torch.nn.Tanh())
    return FeatureNetwork(net, f"proj{seed}", input_size=size, in_channels=channels, input_range="minus_one_one")


@pytest.fixture
def feature_net() -> FeatureNetwork:
    return make_feature_net()


@pytest.fixture
def uint8_images() -> torch.Tensor:
    """64 greyscale 8x8 uint8 images with structure (a gradient plus noise)."""
    g = torch.Generator().manual_seed(1)
    ramp = torch.linspace(0, 200, 8).expand(8, 8)
    noise = torch.randint(0, 56, (64, 1, 8, 8), generator=g)
    return (ramp + noise).to(torch.uint8)
