"""`model.kind` strings -> adapters, and loading a teacher from a local folder or the hub.

The path and parameterisation come from the checkpoint's own scheduler/scheduler_config.json, so a
config file only names the kind and the checkpoint.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..diffusion import FlowPath, GaussianPath, VPPath
from .adapter import DiffusersDenoiser
from .dit import DiTDenoiser
from .flux import FluxDenoiser
from .sana import SanaDenoiser
from .schedule import path_from_scheduler_config
from .sd3 import SD3Denoiser
from .unet import UNet2DConditionDenoiser, UNet2DDenoiser


@dataclass(frozen=True)
class Family:
    adapter: type[DiffusersDenoiser]
    model_class: str  # diffusers class name
    subfolder: str  # where a diffusers pipeline folder keeps the network
    flow: bool  # default path when no scheduler config is given: flow matching, else DDPM


FAMILIES: dict[str, Family] = {
    "unet2d": Family(UNet2DDenoiser, "UNet2DModel", "unet", flow=False),
    "unet2d_condition": Family(UNet2DConditionDenoiser, "UNet2DConditionModel", "unet", flow=False),
    "sd3": Family(SD3Denoiser, "SD3Transformer2DModel", "transformer", flow=True),
    "flux": Family(FluxDenoiser, "FluxTransformer2DModel", "transformer", flow=True),
    "sana": Family(SanaDenoiser, "SanaTransformer2DModel", "transformer", flow=True),
    "dit": Family(DiTDenoiser, "DiTTransformer2DModel", "transformer", flow=False),
}


def _family(kind: str) -> Family:
    if kind not in FAMILIES:
        raise ValueError(f"unknown model kind {kind!r}; allowed kinds: {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def _model_class(name: str) -> type:
    import diffusers

    return getattr(diffusers, name)


def build_denoiser(kind: str, model: nn.Module, path: GaussianPath | None = None,
                   prediction_type: str | None = None) -> DiffusersDenoiser:
    """Wrap a diffusers network. Without `path`/`prediction_type`: flow families -> FlowPath +
    'flow_prediction'; DDPM families -> diffusers' default DDPM schedule + 'epsilon' (prefer
    load_denoiser, which reads the checkpoint's scheduler config)."""
    family = _family(kind)
    expected = _model_class(family.model_class)
    if not isinstance(model, expected):
        choices = ", ".join(f"{k}={f.model_class}" for k, f in FAMILIES.items())
        raise TypeError(f"kind {kind!r} wraps a diffusers {family.model_class}, got {type(model).__name__}; "
                        f"pick the kind for this class from: {choices}")
    if path is None:
        path = FlowPath() if family.flow else VPPath.from_scheduler_config()
    if prediction_type is None:
        prediction_type = "flow_prediction" if isinstance(path, FlowPath) else "epsilon"
    return family.adapter(model, path, prediction_type)


def load_denoiser(kind: str, pretrained: str, subfolder: str | None = None, dtype: torch.dtype | None = None,
                  path: GaussianPath | None = None, prediction_type: str | None = None,
                  **from_pretrained_kwargs: Any) -> DiffusersDenoiser:
    """Load `kind`'s network from a pipeline folder / hub id and declare its path from the scheduler config.

    `subfolder` defaults to the family's ('unet' or 'transformer') when `pretrained` is a pipeline
    folder, or '' when it is the model folder itself. The scheduler config is read from
    `<pretrained>/scheduler/`; pass path= and prediction_type= when the checkpoint has none.
    """
    family = _family(kind)
    _check_reachable(pretrained)
    if subfolder is None:
        is_model_dir = os.path.isfile(os.path.join(pretrained, "config.json"))
        subfolder = "" if is_model_dir else family.subfolder
    cls = _model_class(family.model_class)
    try:
        model = cls.from_pretrained(pretrained, subfolder=subfolder or None, torch_dtype=dtype,
                                    **from_pretrained_kwargs)
    except (OSError, ValueError) as err:
        raise OSError(f"could not load {family.model_class} from {pretrained!r} (subfolder={subfolder!r}): {err}. "
                      "Check the folder layout or pass subfolder=...") from err
    if path is None or prediction_type is None:
        config_path, config_type = _scheduler_path(pretrained)
        path = path or config_path
        prediction_type = prediction_type or config_type
    return family.adapter(model, path, prediction_type)


def _scheduler_path(pretrained: str) -> tuple[GaussianPath, str]:
    from diffusers import DDPMScheduler

    try:  # any scheduler class reads scheduler_config.json as a raw dict (with its _class_name)
        config = DDPMScheduler.load_config(pretrained, subfolder="scheduler")
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"no scheduler/scheduler_config.json under {pretrained!r}, so the teacher's noise schedule and "
            "prediction type are unknown; add the scheduler folder (pipeline.save_pretrained writes it) or "
            "pass path=... and prediction_type=... explicitly") from err
    return path_from_scheduler_config(config)


def _check_reachable(pretrained: str) -> None:
    """Fail early with the fix when a checkpoint cannot be found (missing folder, or offline and uncached)."""
    if os.path.isdir(pretrained):
        return
    if not _HUB_ID.match(pretrained):
        raise FileNotFoundError(f"checkpoint folder {pretrained!r} does not exist; pass an existing local folder "
                                "(e.g. pipeline.save_pretrained output) or a hub id 'owner/name'")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        cached = [try_to_load_from_cache(pretrained, name) for name in ("model_index.json", "config.json")]
        if not any(isinstance(c, str) for c in cached):
            raise FileNotFoundError(
                f"{pretrained!r} is not a local folder and HF_HUB_OFFLINE=1 forbids downloading it; download it "
                f"while online (`hf download {pretrained} --local-dir DIR`) and pass DIR, or unset HF_HUB_OFFLINE")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or env
