"""Aspect buckets: bucket list, assignment, same-bucket seeded batches, SDXL size/crop records."""

import json
from itertools import islice

import pytest
from .image_helpers import random_pixels, write_png

from fewstep.data import build_dataloader
from fewstep.data.buckets import BucketBatchPlan, make_buckets, nearest_bucket


def test_bucket_list_properties():
    buckets = make_buckets(1024, 64, 2.0)
    assert (1024, 1024) in buckets and (832, 1216) in buckets and (1216, 832) in buckets
    for h, w in buckets:
        assert h % 64 == 0 and w % 64 == 0 and h * w <= 1024 ** 2 and max(h, w) / min(h, w) <= 2.0
        assert h * w > 0.85 * 1024 ** 2  # roughly equal area
        assert (w, h) in buckets
    with pytest.raises(ValueError, match="multiple of bucket_step"):
        make_buckets(1000, 64)


def test_nearest_bucket_by_aspect_ratio():
    buckets = [(40, 24), (32, 32), (24, 40)]
    assert nearest_bucket((100, 60), buckets) == 0
    assert nearest_bucket((50, 52), buckets) == 1
    assert nearest_bucket((20, 60), buckets) == 2


def test_plan_batches_are_single_bucket_seeded_sharded_and_resumable():
    bucket_ids = [0] * 7 + [1] * 9 + [2] * 4
    plan = lambda rank, seed=0: BucketBatchPlan(bucket_ids, batch_size=2, rank=rank, world_size=2, seed=seed)
    epoch0 = [list(plan(r).batches(0, 0)) for r in (0, 1)]
    assert plan(0).batches_per_epoch() == len(epoch0[0]) == len(epoch0[1]) == 4  # 3+4+2 full batches, trimmed to 8
    for batch in epoch0[0] + epoch0[1]:
        assert len({bucket_ids[i] for i in batch}) == 1
    seen = [i for rank in epoch0 for batch in rank for i in batch]
    assert len(seen) == len(set(seen)) == 16
    assert epoch0[0] == list(plan(0).batches(0, 0)) and epoch0[0] != list(plan(0, seed=1).batches(0, 0))
    assert list(plan(1).batches(0, 8)) == epoch0[1][2:]  # two steps of 2x2 samples consumed
    with pytest.raises(ValueError, match="batch_size"):
        next(plan(0).batches(0, 3))


@pytest.fixture
def mixed_folder(tmp_path):
    shapes = [(40, 24)] * 4 + [(32, 32)] * 4 + [(24, 40)] * 3 + [(20, 60)]
    for i, (h, w) in enumerate(shapes):
        write_png(tmp_path / f"{i:02d}.png", random_pixels(h, w, seed=i))
        (tmp_path / f"{i:02d}.txt").write_text(f"{h}x{w} #{i}")
    return tmp_path


def bucketed_loader(root, **extra):
    cfg = {"kind": "imagefolder", "path": str(root), "resolution": 32, "bucket_step": 8, "buckets": True,
           "batch_size": 2, **extra}
    return build_dataloader(cfg, rank=0, world_size=1, seed=0)


def test_bucketed_loader_shapes_and_sdxl_records(mixed_folder):
    loader = bucketed_loader(mixed_folder)
    assert loader.batches_per_epoch() == 6
    found_odd = False
    for batch in islice(loader, 6):
        shape = tuple(batch["pixel_values"].shape[2:])
        assert shape in {(40, 24), (32, 32), (24, 40)}
        for prompt, size, crop in zip(batch["prompt"], batch["original_size"], batch["crop_top_left"]):
            h, w = map(int, prompt.split(" ")[0].split("x"))
            assert size.tolist() == [h, w]
            scale = max(shape[0] / h, shape[1] / w)  # independent: cover the bucket, centre the crop
            assert crop.tolist() == [(round(h * scale) - shape[0]) // 2, (round(w * scale) - shape[1]) // 2]
            found_odd |= (h, w) == (20, 60)
    assert found_odd


def test_bucketed_loader_resume(mixed_folder):
    loader = bucketed_loader(mixed_folder)
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = json.loads(json.dumps(loader.state_dict()))
    expected = [tuple(next(iterator)["prompt"]) for _ in range(5)]
    resumed = bucketed_loader(mixed_folder)
    resumed.load_state_dict(state)
    assert [tuple(b["prompt"]) for b in islice(resumed, 5)] == expected
