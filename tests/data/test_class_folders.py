"""Class-labelled folders: sorted labels, saved mapping, layout errors."""

import pytest
from .image_helpers import random_pixels, write_png

from fewstep.data import build_dataloader
from fewstep.data.class_folders import ClassFolderDataset, load_class_index
from fewstep.data.errors import EmptyDatasetError


def make_classes(root, names=("zebra", "ant", "Moose"), per_class=2):
    for c, name in enumerate(names):
        for i in range(per_class):
            write_png(root / name / f"{i}.png", random_pixels(8, 8, seed=10 * c + i))
    return root


def test_labels_follow_sorted_class_names(tmp_path):
    dataset = ClassFolderDataset(make_classes(tmp_path), resolution=8)
    assert dataset.class_names == sorted(["zebra", "ant", "Moose"]) == ["Moose", "ant", "zebra"]
    for index in range(len(dataset)):
        expected = dataset.class_names.index(dataset.files[index].parent.name)
        assert dataset[index]["class_labels"].item() == expected
    dataset.save_class_index(tmp_path / "classes.json")
    assert load_class_index(tmp_path / "classes.json") == ["Moose", "ant", "zebra"]


def test_loader_batches_carry_long_labels(tmp_path):
    loader = build_dataloader({"kind": "class_folders", "path": str(make_classes(tmp_path)), "resolution": 8,
                               "batch_size": 3}, rank=0, world_size=1, seed=0)
    batch = next(iter(loader))
    assert batch["class_labels"].dtype.is_floating_point is False and batch["class_labels"].shape == (3,)
    assert batch["pixel_values"].shape == (3, 3, 8, 8)


def test_layout_errors(tmp_path):
    with pytest.raises(EmptyDatasetError, match=r"no images found .*root/<class_name>/\*.png"):
        ClassFolderDataset(tmp_path, resolution=8)
    make_classes(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(EmptyDatasetError, match=r"without images .*\['empty_class'\]"):
        ClassFolderDataset(tmp_path, resolution=8)
    (tmp_path / "empty_class").rmdir()
    write_png(tmp_path / "loose.png", random_pixels(8, 8, seed=0))
    with pytest.raises(EmptyDatasetError, match=r"directly in .*loose.png"):
        ClassFolderDataset(tmp_path, resolution=8)
