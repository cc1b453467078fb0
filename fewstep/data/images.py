"""Image decoding and the resize + center-crop transform (PIL + numpy; torchvision would pull a CUDA torch).

Every sample keeps the SDXL micro-conditioning facts: the original (H, W) and the crop's top-left
corner in the resized image, exactly as diffusers' SDXL training script computes them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UnreadableImageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def open_image(source: str | Path | bytes, name: str, channels: int = 3) -> Image.Image:
    """Decode to RGB (or L), applying EXIF rotation and flattening transparency onto white.

    Why white: converting RGBA straight to RGB keeps whatever colour hides under alpha=0,
    usually black, which turns transparent logos into black squares.
    """
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return image.convert("RGB" if channels == 3 else "L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot decode image {name}: {err}. Delete or re-encode the file "
                                   "(e.g. re-save it as PNG)") from err


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) after EXIF rotation, reading only the header (needed up front for bucketing)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise UnreadableImageError(f"cannot read image header of {path}: {err}. Delete or re-encode the file") from err
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def resize_center_crop(image: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Scale so the image covers `size` (H, W), then center-crop; returns (image, (top, left))."""
    target_h, target_w = size
    width, height = image.size
    scale = max(target_h / height, target_w / width)
    new_w, new_h = max(target_w, round(width * scale)), max(target_h, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    return image.crop((left, top, left + target_w, top + target_h)), (top, left)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL -> float (C, H, W) in [-1, 1], the range diffusers VAEs and pixel models expect."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def image_sample(image: Image.Image, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The per-sample dict every image source returns (collates into batched tensors)."""
    original_size = torch.tensor([image.size[1], image.size[0]], dtype=torch.long)
    cropped, top_left = resize_center_crop(image, size)
    return {"pixel_values": to_tensor(cropped), "original_size": original_size,
            "crop_top_left": torch.tensor(top_left, dtype=torch.long)}
