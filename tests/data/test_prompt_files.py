"""Prompt files and the endless seeded, rank-sharded prompt stream."""

import json
from itertools import islice

import pytest

from fewstep.data import build_dataloader
from fewstep.data.errors import EmptyDatasetError, MissingCaptionError
from fewstep.data.prompts import read_prompts

PROMPTS = [f"prompt {i}" for i in range(10)]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:5]) + "\n\n  \n" + "\n".join(PROMPTS[5:]) + "\n")
    return path


def loader(path, rank=0, world_size=1, seed=0, batch_size=3):
    return build_dataloader({"kind": "prompts", "path": str(path), "batch_size": batch_size}, rank, world_size, seed)


def test_formats(tmp_path, prompt_file):
    assert read_prompts(prompt_file) == PROMPTS
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"prompt": p, "id": i}) for i, p in enumerate(PROMPTS)))
    assert read_prompts(tmp_path / "p.jsonl") == PROMPTS
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": p}) for p in PROMPTS))
    assert read_prompts(tmp_path / "t.jsonl") == PROMPTS
    (tmp_path / "p.csv").write_text("id,caption\n" + "".join(f'{i},"{p}"\n' for i, p in enumerate(PROMPTS)))
    assert read_prompts(tmp_path / "p.csv") == PROMPTS


def test_errors(tmp_path):
    with pytest.raises(EmptyDatasetError, match="no prompt file at .*one prompt per line"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(EmptyDatasetError, match="no non-empty prompts"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"other": "b"}))
    with pytest.raises(MissingCaptionError, match=r"rows \[2\]"):
        read_prompts(tmp_path / "p.jsonl")
    (tmp_path / "p.parquet").write_text("x")
    with pytest.raises(ValueError, match="unsupported prompt file"):
        read_prompts(tmp_path / "p.parquet")


def test_stream_is_endless_seeded_and_covers_each_epoch(prompt_file):
    first = [b["prompt"] for b in islice(loader(prompt_file, batch_size=5), 6)]  # 3 epochs of 10
    again = [b["prompt"] for b in islice(loader(prompt_file, batch_size=5), 6)]
    other = [b["prompt"] for b in islice(loader(prompt_file, batch_size=5, seed=1), 6)]
    assert first == again and first != other
    for epoch in range(3):
        assert sorted(first[2 * epoch] + first[2 * epoch + 1]) == sorted(PROMPTS)


def test_ranks_see_disjoint_prompts_within_an_epoch(prompt_file):
    rank0 = next(iter(loader(prompt_file, rank=0, world_size=2, batch_size=5)))["prompt"]
    rank1 = next(iter(loader(prompt_file, rank=1, world_size=2, batch_size=5)))["prompt"]
    assert not set(rank0) & set(rank1) and sorted(rank0 + rank1) == sorted(PROMPTS)


def test_resume_gives_the_same_following_batches(prompt_file):
    original = loader(prompt_file, rank=1, world_size=2)
    iterator = iter(original)
    for _ in range(4):
        next(iterator)
    state = original.state_dict()
    expected = [next(iterator)["prompt"] for _ in range(5)]
    resumed = loader(prompt_file, rank=1, world_size=2)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert [b["prompt"] for b in islice(resumed, 5)] == expected


def test_fewer_prompts_than_a_batch(tmp_path):
    (tmp_path / "two.txt").write_text("a\nb\n")
    batch = next(iter(loader(tmp_path / "two.txt", batch_size=5)))["prompt"]
    assert len(batch) == 5 and set(batch) == {"a", "b"}
