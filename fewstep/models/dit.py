"""Adapter for diffusers.DiTTransformer2DModel (class-conditional DiT, Peebles & Xie 2023)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..diffusion import GaussianPath
from .adapter import DiffusersDenoiser
from .base import Cond


class DiTDenoiser(DiffusersDenoiser):
    """cond = {"class_labels": LongTensor(B)}; null class = num_classes (DiT's LabelEmbedding CFG row).

    learn_sigma checkpoints (out_channels == 2 * in_channels) also output the variance interpolation;
    like DiTPipeline we keep only the first in_channels (the eps / native prediction).
    """

    kind = "dit"
    cond_keys = required_keys = frozenset({"class_labels"})

    def __init__(self, model: nn.Module, path: GaussianPath, prediction_type: str):
        super().__init__(model, path, prediction_type)
        self.num_classes: int = model.config.num_embeds_ada_norm
        self.in_channels: int = model.config.in_channels
        self.patch_size: int = model.config.patch_size

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        cond = self.prepare_cond(cond)
        p = self.patch_size
        self._token_grid = (x_t.shape[-2] // p, x_t.shape[-1] // p)
        out = self.model(x_t.to(self.model_dtype), timestep=self.model_time(t, x_t),
                         class_labels=cond["class_labels"], return_dict=False)[0]
        return out[:, : self.in_channels].to(x_t.dtype)

    def null_cond(self, cond: Cond) -> Cond:
        return {**cond, "class_labels": torch.full_like(cond["class_labels"], self.num_classes)}

    def tap_modules(self) -> dict[str, nn.Module]:
        return {f"block_{i}": block for i, block in enumerate(self.model.transformer_blocks)}

    def tap_value(self, name: str, output: object) -> Tensor:
        return self.tokens_to_grid(output)  # BasicTransformerBlock returns (B, N, D)
