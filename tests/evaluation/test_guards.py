"""Guards: declared pixel range/dtype, sample count, and protocol mismatches all raise clearly."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fewstep.evaluation.harness import compare_stats, evaluate_generator
from fewstep.evaluation.images import PixelRangeError, to_nchw, validate_images
from fewstep.evaluation.pipeline import FeaturePipeline
from fewstep.evaluation.stats import (MIN_SAMPLES, FeatureStats, StatsMismatchError, TooFewSamplesError,
                                      check_compatible, compute_stats)

from .conftest import make_feature_net


@pytest.mark.parametrize("images, declared, match", [
    (torch.rand(2, 3, 4, 4), "uint8", "torch.uint8"),                      # float data declared uint8
    (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "zero_one", "float"),     # uint8 data declared float
    (torch.rand(2, 3, 4, 4) * 2 - 1, "zero_one", r"\[0.0, 1.0\]"),         # [-1,1] data declared [0,1]
    (torch.rand(2, 3, 4, 4) * 255, "minus_one_one", r"\[-1.0, 1.0\]"),    # 0..255 floats declared [-1,1]
    (torch.full((2, 3, 4, 4), float("nan")), "zero_one", "NaN"),
    (torch.rand(2, 3, 4, 4), "auto", "declare one of"),                    # no guessing
])
def test_pixel_range_guards(images, declared, match):
    with pytest.raises(PixelRangeError, match=match):
        validate_images(images, declared)


def test_clamp_clips_overshoot_only_when_asked():
    x = torch.tensor([-1.05, 0.0, 1.02]).reshape(1, 1, 1, 3).expand(1, 3, 1, 3)
    with pytest.raises(PixelRangeError, match="clamp"):
        validate_images(x, "minus_one_one")
    assert validate_images(x, "minus_one_one", clamp=True).abs().max() == 1.0


def test_shape_and_layout_errors():
    with pytest.raises(ValueError, match="permute"):
        validate_images(torch.rand(2, 4, 4, 3), "zero_one")
    with pytest.raises(ValueError, match="channels_last"):
        to_nchw(np.zeros((2, 3, 5, 3)))
    assert to_nchw(np.zeros((2, 5, 6, 3))).shape == (2, 3, 5, 6)


def test_too_few_samples_raises_unless_allowed_then_labelled_proxy(feature_net, uint8_images):
    pipe = FeaturePipeline(feature_net, "uint8")
    with pytest.raises(TooFewSamplesError, match="allow_small"):
        compute_stats(uint8_images, pipe, progress=False)
    stats = compute_stats(uint8_images, pipe, allow_small=True, progress=False)
    assert stats.meta.proxy and stats.meta.num_samples == 64 < MIN_SAMPLES
    with pytest.raises(TooFewSamplesError):
        compare_stats(stats, stats)
    assert compare_stats(stats, stats, allow_small=True)["metric"] == "FD-proxy"


def _stats(feature_net, images, **pipe_kw):
    return compute_stats(images, FeaturePipeline(feature_net, "uint8", **pipe_kw), allow_small=True, progress=False)


def test_stats_mismatch_names_each_field(feature_net, uint8_images):
    ref = _stats(feature_net, uint8_images)
    other_net = _stats(make_feature_net(seed=5), uint8_images)
    with pytest.raises(StatsMismatchError, match="extractor_checksum") as err:
        compare_stats(other_net, ref, allow_small=True)
    assert "extractor_id" in str(err.value)
    with pytest.raises(StatsMismatchError, match="resize_mode: 'legacy' vs 'clean'"):
        compare_stats(_stats(feature_net, uint8_images, resize_mode="legacy"), ref, allow_small=True)
    bigger = torch.nn.functional.interpolate(uint8_images.float(), size=16).to(torch.uint8)
    with pytest.raises(StatsMismatchError, match="resolution"):
        compare_stats(_stats(feature_net, bigger), ref, allow_small=True)
    check_compatible(dataclasses.replace(ref.meta, resolution=(16, 16)), ref.meta, ignore=["resolution"])


def test_generator_checked_against_reference_before_generating(feature_net, uint8_images):
    ref = _stats(feature_net, uint8_images)
    called = []

    def generate(n, steps, seed):
        called.append(n)
        return torch.zeros(n, 1, 8, 8)

    with pytest.raises(StatsMismatchError, match="extractor_checksum"):
        evaluate_generator(generate, [1], ref, make_feature_net(seed=9), num_samples=64,
                           pixel_range="zero_one", allow_small=True, progress=False)
    with pytest.raises(TooFewSamplesError):
        evaluate_generator(generate, [1], ref, feature_net, num_samples=64, pixel_range="zero_one", progress=False)
    assert called == []


def test_bare_mu_sigma_file_needs_declared_meta(tmp_path, feature_net, uint8_images):
    ref = _stats(feature_net, uint8_images)
    bare = tmp_path / "pytorch_fid_stats.npz"
    np.savez(bare, mu=ref.mu, sigma=ref.sigma)
    with pytest.raises(StatsMismatchError, match="assume_meta"):
        FeatureStats.load(bare)
    assert FeatureStats.load(bare, assume_meta=ref.meta).meta == ref.meta
