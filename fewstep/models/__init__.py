"""Denoisers: one interface, (x_t, t, cond) -> native prediction, over diffusers networks.

| kind             | diffusers class        | cond keys                                         | timestep input          | null cond (CFG)              |
|------------------|------------------------|---------------------------------------------------|-------------------------|------------------------------|
| unet2d           | UNet2DModel            | class_labels (B,) long; none if unconditional     | model_timestep(t)       | class num_classes [1]        |
| unet2d_condition | UNet2DConditionModel   | encoder_hidden_states; SDXL + text_embeds, time_ids | model_timestep(t)     | empty prompt [2]; time_ids kept |
| sd3              | SD3Transformer2DModel  | encoder_hidden_states, pooled_projections         | model_timestep(t)       | empty prompt [2]             |
| flux             | FluxTransformer2DModel | encoder_hidden_states, pooled_projections, guidance [3] | model_timestep(t)/1000 | empty prompt [2]; guidance kept |
| sana             | SanaTransformer2DModel | encoder_hidden_states, encoder_attention_mask     | model_timestep(t)*timestep_scale | empty prompt + mask [2] |
| dit              | DiTTransformer2DModel  | class_labels (B,) long                            | model_timestep(t)       | class num_classes            |

model_timestep(t): the DDPM step on the VP path, 1000 * sigma on the flow path (what the pipelines pass).
[1] the model needs num_class_embeds = num_classes + 1 (the last row is the null label, as DiT's).
[2] embeddings of the empty / negative prompt from the family's conditioner (`encoders`), stored with
    `denoiser.set_null_cond(conditioner.null_cond())`; never computed silently.
[3] guidance (B,) only for guidance-distilled checkpoints (FLUX-dev, guidance_embeds=True); optional
    txt_ids (L, 3) / img_ids (HW/4, 3), not batched, default to FluxPipeline's zeros / latent grid.
    SANA takes guidance too when guidance_embeds=True (scaled by guidance_embeds_scale, as SANA-Sprint).

x_t is always the (B, C, H, W) latent; FLUX packs 2x2 patches internally. Inputs are cast to the model
dtype and outputs back to x_t's dtype; timesteps, guidance, time_ids and position ids stay fp32.
Path and prediction type come from the checkpoint's scheduler config (`load_denoiser`); text embeddings
come from the frozen conditioners in `encoders`; `tiny` builds seeded toy versions of every family offline.
"""  # noqa: E501 (the markdown table of model kinds cannot be wrapped)

from .adapter import DiffusersDenoiser
from .base import NON_BATCHED_COND_KEYS, Cond, Denoiser, cat_conds
from .dit import DiTDenoiser
from .flux import FluxDenoiser, latent_image_ids, pack_latents, unpack_latents
from .lora import add_lora
from .tiny import tiny_denoiser, tiny_sample_shape
from .registry import FAMILIES, build_denoiser, load_denoiser
from .sana import SanaDenoiser
from .schedule import path_from_scheduler_config
from .sd3 import SD3Denoiser
from .unet import UNet2DConditionDenoiser, UNet2DDenoiser

__all__ = [
    "Cond", "Denoiser", "DiffusersDenoiser", "NON_BATCHED_COND_KEYS", "cat_conds",
    "UNet2DDenoiser", "UNet2DConditionDenoiser", "SD3Denoiser", "FluxDenoiser", "SanaDenoiser", "DiTDenoiser",
    "FAMILIES", "build_denoiser", "load_denoiser", "path_from_scheduler_config",
    "pack_latents", "unpack_latents", "latent_image_ids", "add_lora", "tiny_denoiser", "tiny_sample_shape",
]
