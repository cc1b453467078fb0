"""Stats files round-trip, and every image source (folder, .npz, .safetensors, tensor) agrees."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from scipy import ndimage

from fewstep.evaluation.pipeline import FeaturePipeline
from fewstep.evaluation.resize import resize_for_features
from fewstep.evaluation.stats import FeatureStats, compute_stats, stats_from_folder, stats_from_tensor_file


def test_round_trip_keeps_arrays_and_metadata(tmp_path, feature_net, uint8_images):
    stats = compute_stats(uint8_images, FeaturePipeline(feature_net, "uint8"), dataset="toy", split="train",
                          allow_small=True, keep_features=True, progress=False)
    loaded = FeatureStats.load(stats.save(tmp_path / "ref.npz"))
    assert loaded.meta == stats.meta and (loaded.meta.resolution, loaded.meta.channels) == ((8, 8), 1)
    assert (loaded.meta.dataset, loaded.meta.split, loaded.meta.resize_mode) == ("toy", "train", "clean")
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    np.testing.assert_array_equal(loaded.features, stats.features)


def test_folder_npz_safetensors_and_tensor_agree(tmp_path, feature_net, uint8_images):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(uint8_images):
        Image.fromarray(img[0].numpy(), mode="L").save(folder / f"{i:03d}.png")
    np.savez(tmp_path / "imgs_nhwc.npz", arr_0=uint8_images.permute(0, 2, 3, 1).numpy())
    save_file({"images": uint8_images.contiguous()}, str(tmp_path / "imgs.safetensors"))
    pipe = FeaturePipeline(feature_net, "uint8")
    kw = dict(allow_small=True, progress=False)
    direct = compute_stats(uint8_images, pipe, **kw)
    for stats in (stats_from_folder(folder, pipe, grayscale=True, batch_size=20, **kw),
                  stats_from_tensor_file(tmp_path / "imgs_nhwc.npz", pipe, **kw),
                  stats_from_tensor_file(tmp_path / "imgs.safetensors", pipe, **kw)):
        np.testing.assert_allclose(stats.mu, direct.mu, rtol=1e-12)
        np.testing.assert_allclose(stats.sigma, direct.sigma, rtol=1e-9, atol=1e-14)
        assert stats.meta.num_samples == 64


def keys_bicubic_matrix(n_in: int, n_out: int, a: float = -0.5) -> np.ndarray:
    """Resampling matrix of an antialiased bicubic (Keys, a=-0.5) resize with pixel-centre alignment:
    the kernel is stretched by the downscale factor, weights are normalised per output pixel."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)

    def kernel(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        return np.where(x < 1, ((a + 2) * x - (a + 3)) * x**2 + 1,
                        np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))

    centres = (np.arange(n_out) + 0.5) * scale
    weights = kernel((np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / stretch)
    return weights / weights.sum(1, keepdims=True)


@pytest.mark.parametrize("size", [29, 5])  # up- and (antialiased) down-sampling
def test_clean_resize_is_antialiased_float_bicubic(size):
    """clean = PIL bicubic in float mode on uint8 input, against a direct separable Keys resize."""
    img = torch.randint(0, 256, (1, 3, 13, 17), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = resize_for_features(img, "uint8", size, "clean")[0].numpy()
    rows, cols = keys_bicubic_matrix(13, size), keys_bicubic_matrix(17, size)
    ref = np.clip(np.einsum("ij,cjk,lk->cil", rows, img[0].double().numpy(), cols), 0, 255)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_legacy_resize_is_bilinear_half_pixel():
    """legacy = bilinear with half-pixel centres, checked against scipy.ndimage.zoom(order=1)."""
    img = torch.rand(1, 1, 7, 7, generator=torch.Generator().manual_seed(1))
    ours = resize_for_features(img, "zero_one", 21, "legacy")[0, 0].numpy()
    ref = ndimage.zoom(img[0, 0].double().numpy(), 3, order=1, grid_mode=True, mode="nearest") * 255
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_clean_quantises_float_input_like_a_saved_png():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out = resize_for_features(x, "zero_one", 8, "clean")
    np.testing.assert_array_equal(out.numpy(), np.round(x.numpy() * 255))


def test_missing_key_and_wrong_suffix(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4)), b=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="pass key"):
        from fewstep.evaluation.images import load_tensor_file
        load_tensor_file(tmp_path / "two.npz")
    with pytest.raises(ValueError, match=".npz or .safetensors"):
        load_tensor_file(tmp_path / "x.pt")
