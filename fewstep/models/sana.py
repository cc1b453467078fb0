"""Adapter for diffusers.SanaTransformer2DModel (SANA linear-attention DiT)."""

from __future__ import annotations

from torch import Tensor, nn

from ..diffusion import GaussianPath
from .adapter import DiffusersDenoiser
from .base import Cond


class SanaDenoiser(DiffusersDenoiser):
    """cond = {"encoder_hidden_states": (B, L, caption_channels), "encoder_attention_mask": (B, L) 0/1}.

    Timestep: path.model_timestep(t) * config.timestep_scale, as SanaPipeline passes it. Guidance-embedded
    checkpoints (guidance_embeds=True) also take cond["guidance"] (B,), scaled by guidance_embeds_scale
    like SanaSprintPipeline. Null cond: empty-prompt embeddings and mask via set_null_cond.
    """

    kind = "sana"
    cond_keys = frozenset({"encoder_hidden_states", "encoder_attention_mask", "guidance"})
    text_keys = frozenset({"encoder_hidden_states", "encoder_attention_mask"})
    embedding_keys = frozenset({"encoder_hidden_states"})

    def __init__(self, model: nn.Module, path: GaussianPath, prediction_type: str):
        super().__init__(model, path, prediction_type)
        cfg = model.config  # read once: .config is gone on some wrappers
        self.has_guidance = bool(cfg.guidance_embeds)
        self.guidance_scale_factor = float(cfg.guidance_embeds_scale)
        self.timestep_scale = float(cfg.timestep_scale)
        self.patch_size: int = cfg.patch_size
        self.required_keys = self.text_keys | ({"guidance"} if self.has_guidance else set())

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        cond = self.prepare_cond(cond)
        if "guidance" in cond and not self.has_guidance:
            raise ValueError("this SANA transformer has no guidance embedding (guidance_embeds=False); "
                             "drop cond['guidance']")
        guidance = cond["guidance"].float() * self.guidance_scale_factor if self.has_guidance else None
        p = self.patch_size
        self._token_grid = (x_t.shape[-2] // p, x_t.shape[-1] // p)
        out = self.model(x_t.to(self.model_dtype), encoder_hidden_states=cond["encoder_hidden_states"],
                         encoder_attention_mask=cond["encoder_attention_mask"],
                         timestep=self.model_time(t, x_t) * self.timestep_scale, guidance=guidance,
                         return_dict=False)[0]
        return out.to(x_t.dtype)

    def tap_modules(self) -> dict[str, nn.Module]:
        return {f"block_{i}": block for i, block in enumerate(self.model.transformer_blocks)}

    def tap_value(self, name: str, output: object) -> Tensor:
        return self.tokens_to_grid(output)  # SanaTransformerBlock returns (B, N, D)
