"""Captioned image folders: both caption conventions, exact pixels, and every error message."""

import json

import numpy as np
import pytest
import torch
from .image_helpers import random_pixels, write_png

from fewstep.data.errors import EmptyDatasetError, MissingCaptionError, UnreadableImageError
from fewstep.data.imagefolder import CaptionedImageFolder


@pytest.mark.parametrize("style", ["jsonl", "csv", "sidecar"])
def test_captions_and_exact_pixels(caption_folder, style):
    root = caption_folder(n=3, style=style)
    dataset = CaptionedImageFolder(root, resolution=8)
    assert len(dataset) == 3
    for i in range(3):
        sample = dataset[i]
        assert sample["prompt"] == f"caption {i}"
        expected = torch.from_numpy(random_pixels(8, 8, seed=i).astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
        torch.testing.assert_close(sample["pixel_values"], expected)
        assert sample["original_size"].tolist() == [8, 8] and sample["crop_top_left"].tolist() == [0, 0]


def test_center_crop_matches_numpy_slice(tmp_path):
    pixels = random_pixels(8, 14, seed=7)  # H=8, W=14 -> no resize, crop 3 columns from the left
    write_png(tmp_path / "wide.png", pixels)
    (tmp_path / "wide.txt").write_text("wide")
    sample = CaptionedImageFolder(tmp_path, resolution=8)[0]
    expected = torch.from_numpy(pixels[:, 3:11].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    torch.testing.assert_close(sample["pixel_values"], expected)
    assert sample["original_size"].tolist() == [8, 14] and sample["crop_top_left"].tolist() == [0, 3]


def test_downscale_constant_image_and_grayscale(tmp_path):
    write_png(tmp_path / "a.png", np.full((32, 16, 3), 51, dtype=np.uint8))
    (tmp_path / "a.txt").write_text("grey")
    sample = CaptionedImageFolder(tmp_path, resolution=8, channels=1)[0]
    assert sample["pixel_values"].shape == (1, 8, 8)
    torch.testing.assert_close(sample["pixel_values"], torch.full((1, 8, 8), 51 / 127.5 - 1), atol=1e-6, rtol=0)
    assert sample["crop_top_left"].tolist() == [4, 0]  # resized to 16x8, centre 8 rows


def test_transparent_png_is_flattened_on_white(tmp_path):
    from PIL import Image
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "t.png")
    (tmp_path / "t.txt").write_text("transparent")
    assert torch.all(CaptionedImageFolder(tmp_path, resolution=8)[0]["pixel_values"] == 1.0)


def test_empty_folder_names_path_and_layout(tmp_path):
    with pytest.raises(EmptyDatasetError, match=rf"no images found under {tmp_path}.*metadata.jsonl"):
        CaptionedImageFolder(tmp_path, resolution=8)
    with pytest.raises(EmptyDatasetError, match="is not a folder"):
        CaptionedImageFolder(tmp_path / "nope", resolution=8)


def test_missing_captions_name_the_files(caption_folder):
    root = caption_folder(n=3, style="sidecar")
    (root / "img1.txt").unlink()
    (root / "img2.txt").write_text("  \n")  # blank counts as missing
    with pytest.raises(MissingCaptionError,
                       match=r"2 of 3 images .* \['img1.png', 'img2.png'\].*require_captions: false"):
        CaptionedImageFolder(root, resolution=8)
    assert CaptionedImageFolder(root, resolution=8, require_captions=False)[1]["prompt"] == ""


def test_image_without_metadata_row_is_an_error_not_dropped(caption_folder):
    root = caption_folder(n=2, style="jsonl")
    write_png(root / "extra.png", random_pixels(8, 8, seed=9))
    with pytest.raises(MissingCaptionError, match="extra.png"):
        CaptionedImageFolder(root, resolution=8)


def test_metadata_errors(caption_folder):
    root = caption_folder(n=2, style="jsonl")
    with pytest.raises(MissingCaptionError, match="no column 'caption'.*data.caption_column"):
        CaptionedImageFolder(root, resolution=8, caption_column="caption")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "x"}))
    with pytest.raises(EmptyDatasetError, match="names 'gone.png', which is not a file"):
        CaptionedImageFolder(root, resolution=8)


def test_unreadable_image_names_the_file(caption_folder):
    root = caption_folder(n=2, style="sidecar")
    (root / "img1.png").write_bytes(b"garbage")
    dataset = CaptionedImageFolder(root, resolution=8)
    dataset[0]
    with pytest.raises(UnreadableImageError, match=r"img1.png.*re-encode"):
        dataset[1]


def test_hidden_folders_are_ignored(caption_folder):
    root = caption_folder(n=2, style="sidecar")
    write_png(root / ".ipynb_checkpoints" / "img0-checkpoint.png", random_pixels(8, 8, seed=0))
    assert len(CaptionedImageFolder(root, resolution=8)) == 2
