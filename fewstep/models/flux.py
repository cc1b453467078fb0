"""Adapter for diffusers.FluxTransformer2DModel (FLUX.1 dev / schnell style MMDiT).

x_t stays in the VAE latent layout (B, C, H, W) at the interface; the 2x2 patch packing to (B, HW/4, 4C)
tokens and back happens inside, exactly as FluxPipeline._pack_latents / _unpack_latents do (tested
against them), so every objective and solver treats FLUX like any other latent model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..diffusion import GaussianPath
from .adapter import DiffusersDenoiser
from .base import Cond


def pack_latents(latents: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): row-major 2x2 patches, channel-major inside a patch."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX packs 2x2 latent patches: H and W must be even, got {h}x{w}")
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """Inverse of pack_latents for a (height, width) latent."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def latent_image_ids(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """(H/2 * W/2, 3) rotary position ids (0, row, col) of the packed tokens, as FluxPipeline builds them."""
    rows = torch.arange(height // 2, dtype=torch.float32, device=device)
    cols = torch.arange(width // 2, dtype=torch.float32, device=device)
    ids = torch.zeros(height // 2, width // 2, 3, device=device)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(-1, 3)


class FluxDenoiser(DiffusersDenoiser):
    """cond = {"encoder_hidden_states": (B, L, joint_dim) T5, "pooled_projections": (B, P) CLIP pooled,
    optional "txt_ids": (L, 3) and "img_ids": (HW/4, 3) (not batched; default zeros / the latent grid),
    "guidance": (B,) embedded guidance scale — required for guidance-distilled (FLUX-dev) checkpoints}.

    Timestep: FluxPipeline passes scheduler timestep / 1000 (= sigma) and the transformer multiplies by
    1000 itself, so we pass path.model_timestep(t) / 1000. Null cond (true CFG): empty-prompt embeddings
    via set_null_cond; guidance is kept per sample. Do not combine true CFG with embedded guidance on a
    guidance-distilled student unless you mean to guide twice.
    """

    kind = "flux"
    cond_keys = frozenset({"encoder_hidden_states", "pooled_projections", "txt_ids", "img_ids", "guidance"})
    text_keys = embedding_keys = frozenset({"encoder_hidden_states", "pooled_projections"})

    def __init__(self, model: nn.Module, path: GaussianPath, prediction_type: str):
        super().__init__(model, path, prediction_type)
        self.has_guidance = bool(model.config.guidance_embeds)
        self.required_keys = self.text_keys | ({"guidance"} if self.has_guidance else set())

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        cond = self.prepare_cond(cond)
        if "guidance" in cond and not self.has_guidance:
            raise ValueError("this FLUX transformer has no guidance embedding (guidance_embeds=False, e.g. schnell); "
                             "drop cond['guidance']")
        h, w = x_t.shape[-2:]
        self._token_grid = (h // 2, w // 2)
        text = cond["encoder_hidden_states"]
        txt_ids = cond.get("txt_ids", torch.zeros(text.shape[1], 3, device=x_t.device))
        img_ids = cond.get("img_ids", latent_image_ids(h, w, x_t.device))
        guidance = cond["guidance"].float() if self.has_guidance else None
        out = self.model(pack_latents(x_t.to(self.model_dtype)), encoder_hidden_states=text,
                         pooled_projections=cond["pooled_projections"], timestep=self.model_time(t, x_t) / 1000,
                         img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        return unpack_latents(out, h, w).to(x_t.dtype)

    def tap_modules(self) -> dict[str, nn.Module]:
        taps = {f"block_{i}": block for i, block in enumerate(self.model.transformer_blocks)}
        taps.update({f"single_{i}": block for i, block in enumerate(self.model.single_transformer_blocks)})
        return taps

    def tap_value(self, name: str, output: object) -> Tensor:
        return self.tokens_to_grid(output[1])  # both block kinds return (encoder_hidden, image hidden)
