"""Adapter for diffusers.SD3Transformer2DModel (Stable Diffusion 3 / 3.5 MMDiT)."""

from __future__ import annotations

from torch import Tensor, nn

from ..diffusion import GaussianPath
from .adapter import DiffusersDenoiser
from .base import Cond


class SD3Denoiser(DiffusersDenoiser):
    """cond = {"encoder_hidden_states": (B, L, joint_attention_dim), "pooled_projections": (B, P)}.

    Timestep: path.model_timestep(t) (sigma * 1000 on the flow path), exactly what
    StableDiffusion3Pipeline passes. Null cond: empty-prompt embeddings via set_null_cond.
    Feature taps block_i record image tokens reshaped to (B, D, H/p, W/p).
    """

    kind = "sd3"
    cond_keys = required_keys = text_keys = embedding_keys = frozenset({"encoder_hidden_states", "pooled_projections"})

    def __init__(self, model: nn.Module, path: GaussianPath, prediction_type: str):
        super().__init__(model, path, prediction_type)
        self.patch_size: int = model.config.patch_size  # read once: .config is gone on some wrappers

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        cond = self.prepare_cond(cond)
        p = self.patch_size
        self._token_grid = (x_t.shape[-2] // p, x_t.shape[-1] // p)
        out = self.model(x_t.to(self.model_dtype), encoder_hidden_states=cond["encoder_hidden_states"],
                         pooled_projections=cond["pooled_projections"], timestep=self.model_time(t, x_t),
                         return_dict=False)[0]
        return out.to(x_t.dtype)

    def tap_modules(self) -> dict[str, nn.Module]:
        return {f"block_{i}": block for i, block in enumerate(self.model.transformer_blocks)}

    def tap_value(self, name: str, output: object) -> Tensor:
        return self.tokens_to_grid(output[1])  # JointTransformerBlock returns (encoder_hidden, hidden)
