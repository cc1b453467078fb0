"""Latent cache: values equal a direct VAE encode, verified reader, buckets by shape, CLI."""

import argparse
import json
from itertools import islice

import pytest
import torch
from diffusers import AutoencoderKL

from fewstep.data import CacheIntegrityError, EmptyDatasetError, build_dataloader
from fewstep.data.cache import CachedLatentDataset, add_cache_parser, cache_dataset, run_cache
from fewstep.data.class_folders import ClassFolderDataset
from fewstep.data.imagefolder import CaptionedImageFolder
from fewstep.data.latent_cache import denormalize_latents, normalize_latents

SCALE, SHIFT = 0.5, 0.1


def tiny_vae(**config):
    torch.manual_seed(0)
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                         sample_size=8, scaling_factor=SCALE, shift_factor=SHIFT, **config).eval()


def fake_text_encoder(prompts):
    """Deterministic per-prompt embeddings, so the test can recompute them independently."""
    codes = torch.tensor([[float(ord(c)) for c in p.ljust(12)[:12]] for p in prompts])
    return {"encoder_hidden_states": codes.view(-1, 3, 4), "pooled_prompt_embeds": codes.sum(1, keepdim=True)}


def test_round_trip_equals_direct_encode(caption_folder, tmp_path):
    dataset = CaptionedImageFolder(caption_folder(n=5), resolution=8)
    vae = tiny_vae()
    index = cache_dataset(dataset, vae, fake_text_encoder, tmp_path / "cache", shard_size=2, batch_size=3)
    assert [s["num_samples"] for s in index["shards"]] == [2, 2, 1] and index["num_samples"] == 5
    assert index["config"]["vae"]["scaling_factor"] == SCALE and index["config"]["vae"]["shift_factor"] == SHIFT
    cached = CachedLatentDataset(tmp_path / "cache")
    assert len(cached) == 5
    for i in range(5):
        sample, source = cached[i], dataset[i]
        with torch.no_grad():
            direct = (vae.encode(source["pixel_values"][None]).latent_dist.mode()[0] - SHIFT) * SCALE
        torch.testing.assert_close(sample["latents"], direct, atol=1e-5, rtol=1e-5)
        assert sample["prompt"] == source["prompt"]
        expected = fake_text_encoder([source["prompt"]])
        torch.testing.assert_close(sample["encoder_hidden_states"], expected["encoder_hidden_states"][0])
        torch.testing.assert_close(sample["pooled_prompt_embeds"], expected["pooled_prompt_embeds"][0])
        assert sample["original_size"].tolist() == [8, 8]


def test_normalisation_with_per_channel_stats():
    config = argparse.Namespace(scaling_factor=2.0, shift_factor=None, latents_mean=[1.0, 2.0], latents_std=[4.0, 8.0])
    latents = torch.randn(3, 2, 4, 4)
    expected = (latents - torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)) * 2.0 / torch.tensor([4.0, 8.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(normalize_latents(latents, config), expected)
    torch.testing.assert_close(denormalize_latents(expected, config), latents)


def test_integrity_checks(caption_folder, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(EmptyDatasetError, match="no latent cache at .*index.json"):
        CachedLatentDataset(cache)
    cache_dataset(CaptionedImageFolder(caption_folder(n=3), resolution=8), tiny_vae(), None, cache, shard_size=2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        cache_dataset(CaptionedImageFolder(caption_folder(n=3), resolution=8), tiny_vae(), None, cache)
    shard = cache / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheIntegrityError, match="shard-00001.safetensors does not match its size/sha256"):
        CachedLatentDataset(cache)
    assert len(CachedLatentDataset(cache, verify=False)) == 3  # size still matches; sha256 check skipped
    shard.unlink()
    with pytest.raises(CacheIntegrityError, match="shard-00001.safetensors is missing"):
        CachedLatentDataset(cache)


def test_bucketed_cache_keeps_shapes_apart_and_loader_resumes(tmp_path):
    from .image_helpers import random_pixels, write_png
    for c, (h, w) in enumerate([(40, 24), (32, 32)]):
        for i in range(3):
            write_png(tmp_path / "img" / f"class{c}" / f"{i}.png", random_pixels(h, w, seed=10 * c + i))
    dataset = ClassFolderDataset(tmp_path / "img", resolution=32, buckets=True, bucket_step=8)
    cache_dataset(dataset, tiny_vae(), None, tmp_path / "cache", shard_size=4, batch_size=2)
    cached = CachedLatentDataset(tmp_path / "cache")
    assert cached.class_names == ["class0", "class1"] and cached.bucket_ids is not None
    cfg = {"kind": "latent_cache", "path": str(tmp_path / "cache"), "batch_size": 3}
    loader = build_dataloader(cfg, rank=0, world_size=1, seed=0)
    iterator = iter(loader)
    first = next(iterator)
    assert first["latents"].shape[1:] in {(4, 20, 12), (4, 16, 16)}
    assert first["class_labels"].tolist() == [first["class_labels"][0].item()] * 3  # one bucket = one class here
    state = json.loads(json.dumps(loader.state_dict()))
    expected = [next(iterator)["latents"] for _ in range(3)]
    resumed = build_dataloader(cfg, rank=0, world_size=1, seed=0)
    resumed.load_state_dict(state)
    for want, got in zip(expected, islice(resumed, 3)):
        torch.testing.assert_close(want, got["latents"])


def test_cli_caches_latents_from_a_saved_vae(caption_folder, tmp_path, capsys):
    tiny_vae().save_pretrained(tmp_path / "model" / "vae")
    parser = argparse.ArgumentParser()
    add_cache_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cache", "--data-kind", "imagefolder", "--data-path", str(caption_folder(n=3)),
                              "--resolution", "8", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "c"),
                              "--no-text", "--store-dtype", "float16", "--device", "cpu"])
    assert args.func(args) == 0 and "cached 3 samples" in capsys.readouterr().out
    cached = CachedLatentDataset(tmp_path / "c")
    assert cached[0]["latents"].dtype == torch.float16 and cached[0]["prompt"] == "caption 0"
    assert cached.index["config"]["source"]["data"]["kind"] == "imagefolder"
    args.data_kind = "prompts"
    with pytest.raises(SystemExit, match="needs an image source"):
        run_cache(args)
