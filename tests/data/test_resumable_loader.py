"""build_dataloader on map-style sources: seeded order, rank sharding, exact resume."""

import json
from itertools import islice

import pytest
import torch

from fewstep.data import EmptyDatasetError, build_dataloader
from fewstep.data.sampling import EpochBatchPlan


def make_loader(root, rank=0, world_size=1, seed=0, batch_size=2, **extra):
    cfg = {"kind": "imagefolder", "path": str(root), "resolution": 8, "batch_size": batch_size, **extra}
    return build_dataloader(cfg, rank, world_size, seed)


def prompts(batches):
    return [tuple(b["prompt"]) for b in batches]


def test_epochs_are_seeded_permutations(caption_folder):
    root = caption_folder(n=6)
    first = prompts(islice(make_loader(root), 6))  # 2 epochs of 3 batches
    assert first == prompts(islice(make_loader(root), 6))
    assert first != prompts(islice(make_loader(root, seed=3), 6))
    for epoch in (first[:3], first[3:]):
        assert sorted(p for batch in epoch for p in batch) == [f"caption {i}" for i in range(6)]
    assert first[:3] != first[3:]  # reshuffled each epoch
    unshuffled = prompts(islice(make_loader(root, shuffle=False), 3))
    assert unshuffled == [("caption 0", "caption 1"), ("caption 2", "caption 3"), ("caption 4", "caption 5")]


def test_two_ranks_split_an_epoch_without_overlap(caption_folder):
    root = caption_folder(n=7)  # batch 1 x 2 ranks: 3 steps per epoch, one sample dropped
    rank0 = [p for b in islice(make_loader(root, rank=0, world_size=2, batch_size=1), 3) for p in b["prompt"]]
    rank1 = [p for b in islice(make_loader(root, rank=1, world_size=2, batch_size=1), 3) for p in b["prompt"]]
    assert len(set(rank0)) == len(set(rank1)) == 3 and not set(rank0) & set(rank1)
    assert make_loader(root, world_size=2, batch_size=1).batches_per_epoch() == 3


@pytest.mark.parametrize("taken", [1, 2, 3, 4])  # mid-epoch, end of epoch, into the next one
def test_resume_continues_exactly(caption_folder, taken):
    root = caption_folder(n=6)
    original = make_loader(root, rank=1, world_size=2, batch_size=1)
    iterator = iter(original)
    for _ in range(taken):
        next(iterator)
    state = json.loads(json.dumps(original.state_dict()))
    expected = [next(iterator) for _ in range(4)]
    resumed = make_loader(root, rank=1, world_size=2, batch_size=1)
    resumed.load_state_dict(state)
    for want, got in zip(expected, islice(resumed, 4)):
        assert want["prompt"] == got["prompt"]
        torch.testing.assert_close(want["pixel_values"], got["pixel_values"])


def test_resume_with_worker_processes(caption_folder):
    root = caption_folder(n=6)
    original = make_loader(root, num_workers=2)
    iterator = iter(original)
    next(iterator)
    state = original.state_dict()  # counts batches handed out, not those prefetched by workers
    expected = prompts(next(iterator) for _ in range(3))
    resumed = make_loader(root, num_workers=2)
    resumed.load_state_dict(state)
    assert prompts(islice(resumed, 3)) == expected


def test_position_is_global_so_world_size_may_change():
    plan2 = EpochBatchPlan(12, batch_size=2, rank=0, world_size=2, seed=0)
    taken = [i for _, b in zip(range(2), plan2.batches(0, 0)) for i in b]
    taken += [i for _, b in zip(range(2), EpochBatchPlan(12, 2, 1, 2, 0).batches(0, 0)) for i in b]
    rest = [i for b in EpochBatchPlan(12, 2, 0, 1, 0).batches(0, 8) for i in b]
    assert sorted(taken + rest) == list(range(12))


def test_guards(caption_folder):
    root = caption_folder(n=3)
    with pytest.raises(EmptyDatasetError, match="3 samples cannot fill one step of batch_size 2 x 2 ranks"):
        next(iter(make_loader(root, world_size=2)))
    loader = make_loader(root, batch_size=1)
    with pytest.raises(ValueError, match="saved with seed 5 .* same run.seed"):
        loader.load_state_dict({"epoch": 0, "samples_consumed": 1, "seed": 5})
    iterator = iter(loader)
    next(iterator)
    loader.load_state_dict(loader.state_dict())
    with pytest.raises(RuntimeError, match=r"call iter\(loader\) again"):
        next(iterator)
    with pytest.warns(UserWarning, match="no data position recorded"):
        loader.load_state_dict({})
