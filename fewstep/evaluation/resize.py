"""The two resize protocols FID numbers are reported under, kept separate and recorded.

clean  : clean-fid (Parmar et al. 2022): quantise to uint8, then PIL bicubic (antialiased)
         per channel in float mode to the extractor size, clipped to [0, 255].
legacy : pytorch-fid / most papers before 2022: torch bilinear (align_corners=False, no
         antialias) on the float image.
Numbers from the two are not comparable (differences of several FID points are common),
so the mode travels in every stats file and result.
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fewstep.evaluation.images import to_uint8, to_unit_float

ResizeMode = Literal["clean", "legacy"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)


def check_resize_mode(mode: str) -> None:
    """Reject an unknown protocol name, listing the valid ones."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES} "
                         "(clean = clean-fid PIL bicubic on uint8, legacy = torch bilinear on float)")


def _pil_bicubic_channel(channel: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(channel.astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), resample=Image.BICUBIC))


def resize_for_features(images: Tensor, pixel_range: str, size: int, mode: str) -> Tensor:
    """Validated images in their declared range -> float32 N x C x size x size in [0, 255]."""
    check_resize_mode(mode)
    if mode == "clean":
        quantised = to_uint8(images, pixel_range).cpu().numpy()
        if quantised.shape[-2:] == (size, size):
            return torch.from_numpy(quantised.astype(np.float32))
        out = np.empty((*quantised.shape[:2], size, size), dtype=np.float32)
        for n in range(quantised.shape[0]):
            for c in range(quantised.shape[1]):
                out[n, c] = _pil_bicubic_channel(quantised[n, c], size)
        return torch.from_numpy(out.clip(0.0, 255.0))
    unit = to_unit_float(images, pixel_range)
    if unit.shape[-2:] != (size, size):
        unit = F.interpolate(unit, size=(size, size), mode="bilinear", align_corners=False)
    return unit * 255.0
