"""Image batches for evaluation: declared pixel ranges, guards, layout, loading from disk.

The pixel range is always declared by the caller and checked, never inferred: a [-1,1]
generator evaluated as [0,1] (or uint8 read as float) still produces a number, just a
wrong one, and that is the most common silent FID bug.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

PixelRange = Literal["uint8", "zero_one", "minus_one_one"]
PIXEL_RANGES: tuple[str, ...] = get_args(PixelRange)
_FLOAT_BOUNDS = {"zero_one": (0.0, 1.0), "minus_one_one": (-1.0, 1.0)}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Float images may overshoot their range by round-off only; anything more is a wrong declaration.
RANGE_ATOL = 1e-4


class PixelRangeError(ValueError):
    """Images do not match the pixel range / dtype the caller declared."""


def check_pixel_range(pixel_range: str) -> None:
    """Reject an unknown range name early, listing the valid ones."""
    if pixel_range not in PIXEL_RANGES:
        raise PixelRangeError(f"unknown pixel_range {pixel_range!r}; declare one of {PIXEL_RANGES} "
                              "(uint8 = integers 0..255, zero_one = float [0,1], minus_one_one = float [-1,1])")


def validate_images(images: Tensor, pixel_range: str, clamp: bool = False) -> Tensor:
    """Check an N x C x H x W batch against its declared range and dtype; return it unchanged.

    clamp=True clips float overshoot to the declared range instead of raising (generators
    often overshoot slightly); it cannot rescue a wrong declaration of uint8 vs float.
    """
    check_pixel_range(pixel_range)
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}; use torch.from_numpy")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be N x C x H x W with C in (1, 3), got shape {tuple(images.shape)}; "
                         "convert N x H x W x C with .permute(0, 3, 1, 2)")
    if pixel_range == "uint8":
        if images.dtype != torch.uint8:
            raise PixelRangeError(f"pixel_range='uint8' needs dtype torch.uint8, got {images.dtype}; "
                                  "declare zero_one or minus_one_one for float images")
        return images
    if not images.is_floating_point():
        raise PixelRangeError(f"pixel_range={pixel_range!r} needs a float tensor, got {images.dtype}; "
                              "declare pixel_range='uint8' for 0..255 integer images")
    if not torch.isfinite(images).all():
        raise PixelRangeError("images contain NaN/Inf; the generator diverged or was fed bad input")
    lo, hi = _FLOAT_BOUNDS[pixel_range]
    if clamp:
        return images.clamp(lo, hi)
    got_lo, got_hi = float(images.min()), float(images.max())
    if got_lo < lo - RANGE_ATOL or got_hi > hi + RANGE_ATOL:
        raise PixelRangeError(f"images span [{got_lo:.4g}, {got_hi:.4g}] but pixel_range={pixel_range!r} "
                              f"declares [{lo}, {hi}]; fix the declaration, or clamp the output "
                              "(clamp=True / --clamp) if small overshoot is expected")
    if pixel_range == "minus_one_one" and got_lo >= 0.0 and images.shape[0] >= 16:
        warnings.warn("no negative pixel in a batch declared minus_one_one: are these [0,1] images?",
                      RuntimeWarning, stacklevel=2)
    return images.clamp(lo, hi)


def to_unit_float(images: Tensor, pixel_range: str) -> Tensor:
    """Map a validated batch to float32 in [0,1] (the one internal layout)."""
    if pixel_range == "uint8":
        return images.float() / 255.0
    if pixel_range == "minus_one_one":
        return (images.float() + 1.0) / 2.0
    return images.float()


def to_uint8(images: Tensor, pixel_range: str) -> Tensor:
    """Quantise to uint8 by rounding, as saving a PNG would (the clean-fid protocol starts here)."""
    if pixel_range == "uint8":
        return images
    return (to_unit_float(images, pixel_range) * 255.0).round().clamp(0, 255).to(torch.uint8)


def to_nchw(array: np.ndarray | Tensor, channels_last: bool | None = None) -> Tensor:
    """Make an N x C x H x W tensor from NCHW / NHWC / N x H x W data (no copy of values).

    channels_last=None detects the layout only when it is unambiguous and raises otherwise.
    """
    tensor = torch.as_tensor(array)
    if tensor.ndim == 3:
        return tensor.unsqueeze(1)
    if tensor.ndim != 4:
        raise ValueError("expected images of shape N x C x H x W, N x H x W x C or N x H x W, "
                         f"got {tuple(tensor.shape)}")
    first, last = tensor.shape[1] in (1, 3), tensor.shape[-1] in (1, 3)
    if channels_last is None:
        if first == last:
            raise ValueError(f"cannot tell the channel axis of shape {tuple(tensor.shape)}; "
                             "pass channels_last=True/False")
        channels_last = last
    return tensor.permute(0, 3, 1, 2).contiguous() if channels_last else tensor


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files in a folder (recursive, sorted so subsets are reproducible)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return files


def load_image_file(path: Path, grayscale: bool) -> Tensor:
    """One image file as a 1 x C x H x W uint8 tensor (PIL decoding, C = 1 or 3)."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("L" if grayscale else "RGB"), dtype=np.uint8)
    chw = arr[None] if grayscale else arr.transpose(2, 0, 1)
    return torch.from_numpy(chw.copy())[None]  # copy: PIL's buffer is read-only


def iter_image_folder(folder: str | Path, batch_size: int, grayscale: bool = False,
                      limit: int | None = None):
    """Yield uint8 N x C x H x W batches from an image folder (all images must share a size)."""
    files = list_image_files(folder)[:limit]
    for start in range(0, len(files), batch_size):
        batch = [load_image_file(p, grayscale) for p in files[start:start + batch_size]]
        shapes = {tuple(b.shape) for b in batch}
        if len(shapes) != 1:
            raise ValueError(f"images under {folder} differ in size {sorted(shapes)}; "
                             "resize them to one resolution first")
        yield torch.cat(batch)


def load_tensor_file(path: str | Path, key: str | None = None, channels_last: bool | None = None) -> Tensor:
    """Images from .npz (numpy, no pickle) or .safetensors as an N x C x H x W tensor.

    key picks the array; by default the file must hold exactly one ('arr_0' of np.savez
    is the usual one in guided-diffusion reference batches, stored N x H x W x C uint8).
    """
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        arrays = load_file(str(path))
    else:
        raise ValueError(f"unsupported image tensor file {path}; use .npz or .safetensors")
    if key is None:
        image_keys = [k for k in arrays if np.ndim(arrays[k]) in (3, 4)]
        if len(image_keys) != 1:
            raise ValueError(f"{path} holds arrays {sorted(arrays)}; pass key= to choose the images")
        key = image_keys[0]
    if key not in arrays:
        raise KeyError(f"{path} has no array {key!r}; it holds {sorted(arrays)}")
    return to_nchw(arrays[key], channels_last)
