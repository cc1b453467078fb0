"""DataConfig validation: every mistake names the key and what is allowed."""

import pytest
from pydantic import ValidationError

from fewstep.data import DATA_KINDS, DataConfig, build_dataloader


def test_unknown_kind_lists_allowed_kinds():
    with pytest.raises(ValidationError,
                       match="allowed kinds: imagefolder, webdataset, prompts, class_folders, latent_cache"):
        DataConfig(kind="laion", path="x")


def test_unknown_key_is_rejected():
    with pytest.raises(ValidationError, match="bogus"):
        DataConfig(kind="prompts", path="p.txt", bogus=1)


@pytest.mark.parametrize("kind", ["imagefolder", "webdataset", "class_folders"])
def test_image_kinds_need_resolution(kind):
    with pytest.raises(ValidationError, match="data.resolution is required"):
        DataConfig(kind=kind, path="x")


def test_buckets_only_for_folders_and_step_multiple():
    with pytest.raises(ValidationError, match="not webdataset"):
        DataConfig(kind="webdataset", path="x", resolution=64, buckets=True)
    with pytest.raises(ValidationError, match="multiple of data.bucket_step"):
        DataConfig(kind="imagefolder", path="x", resolution=100, buckets=True)


def test_defaults_and_all_kinds_accepted():
    for kind in DATA_KINDS:
        cfg = DataConfig(kind=kind, path="x", resolution=8)
        assert cfg.batch_size == 8 and cfg.num_workers == 0


def test_build_dataloader_accepts_a_mapping_and_checks_rank(tmp_path):
    (tmp_path / "p.txt").write_text("a\nb\n")
    loader = build_dataloader({"kind": "prompts", "path": str(tmp_path / "p.txt"), "batch_size": 2}, 0, 1, 0)
    assert sorted(next(iter(loader))["prompt"]) == ["a", "b"]
    with pytest.raises(ValueError, match="outside world_size"):
        build_dataloader({"kind": "prompts", "path": str(tmp_path / "p.txt")}, 2, 2, 0)
