"""webdataset shards: captions, rank/worker sharding, exact resume, loud filters and bad images."""

import json
from itertools import islice

import numpy as np
import pytest
import torch
from .image_helpers import random_pixels

from fewstep.data import AllSamplesRejectedError, EmptyDatasetError, UnreadableImageError, build_dataloader


def shard_loader(root, rank=0, world_size=1, seed=0, **extra):
    cfg = {"kind": "webdataset", "path": str(root), "resolution": 8, "batch_size": 2, "shuffle_buffer": 3, **extra}
    return build_dataloader(cfg, rank, world_size, seed)


def keys(batches):
    return [k for b in batches for k in b["key"]]


def test_one_pass_sees_every_sample_once_with_exact_pixels(shard_folder):
    root = shard_folder(shards=2, per_shard=4)
    batches = list(islice(shard_loader(root), 4))
    assert sorted(keys(batches)) == sorted(f"s{s}_{i}" for s in range(2) for i in range(4))
    batch = batches[0]
    assert batch["prompt"] == [f"caption {k}" for k in batch["key"]]
    s, i = (int(x) for x in batch["key"][0][1:].split("_"))
    expected = torch.from_numpy(random_pixels(8, 8, seed=100 * s + i).astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    torch.testing.assert_close(batch["pixel_values"][0], expected)


def test_json_captions_and_seeded_order(shard_folder):
    root = shard_folder(caption_in="json")
    first = list(islice(shard_loader(root), 6))
    assert first[0]["prompt"][0] == f"caption {first[0]['key'][0]}"
    assert keys(first) == keys(islice(shard_loader(root), 6))
    assert keys(first) != keys(islice(shard_loader(root, seed=1), 6))
    in_order = keys(islice(shard_loader(root, shuffle=False, world_size=1), 3))
    assert in_order == ["s0_0", "s0_1", "s0_2", "s0_3", "s0_4", "s1_0"]
    named = next(iter(shard_loader(shard_folder(json_meta={"alt": "alt text"}), caption_column="alt")))
    assert named["prompt"] == ["alt text", "alt text"]


def test_ranks_read_disjoint_shards(shard_folder):
    root = shard_folder(shards=4, per_shard=4)
    rank0 = keys(islice(shard_loader(root, rank=0, world_size=2), 4))  # one pass of 2 shards
    rank1 = keys(islice(shard_loader(root, rank=1, world_size=2), 4))
    assert len(set(rank0)) == len(set(rank1)) == 8 and not set(rank0) & set(rank1)


@pytest.mark.parametrize("num_workers,taken", [(0, 3), (0, 10), (2, 3)])
def test_resume_continues_exactly(shard_folder, num_workers, taken):
    root = shard_folder(shards=4, per_shard=5)
    original = shard_loader(root, rank=1, world_size=2, num_workers=num_workers)
    iterator = iter(original)
    for _ in range(taken):
        next(iterator)
    state = json.loads(json.dumps(original.state_dict()))
    expected = keys(next(iterator) for _ in range(6))
    resumed = shard_loader(root, rank=1, world_size=2, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert keys(islice(resumed, 6)) == expected


def test_state_from_another_rank_is_refused(shard_folder):
    root = shard_folder()
    state = shard_loader(root, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match=r"'rank': \(0, 1\).*each rank's own state"):
        shard_loader(root, rank=1, world_size=2).load_state_dict(state)


def test_filter_rejecting_everything_says_why(shard_folder):
    root = shard_folder(json_meta={"similarity": 0.3})  # LAION json without 'pwatermark'
    with pytest.raises(AllSamplesRejectedError, match=r"all 20 samples .*20 x json has no 'pwatermark'"):
        next(iter(shard_loader(root, max_pwatermark=0.5)))
    with pytest.raises(AllSamplesRejectedError, match=r"all 4 samples"):
        next(iter(shard_loader(root, max_pwatermark=0.5, reject_check_window=4)))


def test_filters_keep_what_passes(shard_folder):
    root = shard_folder(json_meta={"pwatermark": 0.1, "original_width": 512, "original_height": 256})
    assert len(next(iter(shard_loader(root, max_pwatermark=0.5, min_original_size=256)))["key"]) == 2
    with pytest.raises(AllSamplesRejectedError, match="original size below 300"):
        next(iter(shard_loader(root, min_original_size=300)))


def test_missing_captions_are_counted_rejections(shard_folder):
    root = shard_folder(caption_in="none")
    with pytest.raises(AllSamplesRejectedError, match="no caption"):
        next(iter(shard_loader(root)))
    assert next(iter(shard_loader(root, require_captions=False)))["prompt"] == ["", ""]


def test_bad_image_raises_or_is_skipped(shard_folder):
    root = shard_folder(shards=1, per_shard=4, bad_image_key="s0_2")
    with pytest.raises(UnreadableImageError, match=r"s0_2.png in .*00000.tar.*skip_bad_images"):
        list(islice(shard_loader(root, shuffle_buffer=1), 2))
    assert "s0_2" not in keys(islice(shard_loader(root, skip_bad_images=True), 3))


def test_missing_or_too_few_shards(tmp_path, shard_folder):
    with pytest.raises(EmptyDatasetError, match=r"no webdataset shards at .*\{00000..00099\}.tar"):
        shard_loader(str(tmp_path / "none-{000..003}.tar"))
    root = shard_folder(shards=2)
    with pytest.raises(EmptyDatasetError, match="2 shards cannot feed 2 ranks x 2 workers"):
        shard_loader(root, world_size=2, num_workers=2)
    assert len(next(iter(shard_loader(str(root / "{00000..00001}.tar"))))["key"]) == 2
