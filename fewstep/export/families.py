"""Per-family facts an export needs: the diffusers pipeline class, where the network lives, whether the
pipeline loads LoRAs and under which kohya prefix, and how to run the pipeline on given latents.

`generate` runs the *diffusers* side of a round trip: the pipeline's own __call__ for text-to-image
families (with the shipped scheduler's exact timesteps/sigmas), and for class-conditional families
(DiTPipeline / DDPMPipeline cannot take custom timesteps or class labels respectively) the same
denoising loop those pipelines run, spelled out with the shipped scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .schedulers import FewStepScheduler


@dataclass(frozen=True)
class ExportFamily:
    name: str  # sd15, sdxl, sd3, flux, sana, dit, ddpm
    kind: str  # fewstep model.kind
    pipeline_class: str
    network: str  # pipeline attribute / subfolder of the denoising network
    loads_lora: bool  # the pipeline has load_lora_weights
    kohya_prefix: str | None  # kohya / ComfyUI key prefix for the network's LoRA modules
    kohya_reimport: bool  # diffusers' own kohya conversion maps these names back
    text: bool  # prompts (True) or class labels (False)
    pixel_multiple: int = 1  # the pipeline's check_inputs wants height/width divisible by this


FAMILIES: dict[str, ExportFamily] = {f.name: f for f in [
    ExportFamily("sd15", "unet2d_condition", "StableDiffusionPipeline", "unet", True, "lora_unet_", True, True),
    ExportFamily("sdxl", "unet2d_condition", "StableDiffusionXLPipeline", "unet", True, "lora_unet_", True, True),
    ExportFamily("sd3", "sd3", "StableDiffusion3Pipeline", "transformer", True, "lora_transformer_", False, True),
    ExportFamily("flux", "flux", "FluxPipeline", "transformer", True, "lora_transformer_", True, True),
    ExportFamily("sana", "sana", "SanaPipeline", "transformer", True, "lora_transformer_", False, True, 32),
    ExportFamily("dit", "dit", "DiTPipeline", "transformer", False, None, False, False),
    ExportFamily("ddpm", "unet2d", "DDPMPipeline", "unet", False, None, False, False),
]}


def family_of(denoiser: Any) -> ExportFamily:
    """The export family of a fewstep Denoiser (teacher or student)."""
    kind = getattr(denoiser, "kind", None)
    if kind == "unet2d_condition":
        return FAMILIES["sdxl" if getattr(denoiser, "is_sdxl", False) else "sd15"]
    for family in FAMILIES.values():
        if family.kind == kind:
            return family
    raise ValueError(f"cannot export a {type(denoiser).__name__} (model kind {kind!r}); exports need a diffusers "
                     f"network of kinds {sorted({f.kind for f in FAMILIES.values()})}")


def pipeline_class(family: ExportFamily):
    import diffusers

    return getattr(diffusers, family.pipeline_class)


def family_call_kwargs(family: ExportFamily, embedded_guidance: float | None) -> dict[str, Any]:
    """Pipeline-call kwargs that make the pipeline condition the network as fewstep trained it."""
    if family.name == "flux" and embedded_guidance is not None:
        return {"guidance_scale": float(embedded_guidance)}  # FLUX-dev's embedded guidance, not CFG
    if family.name == "sana":
        return {"complex_human_instruction": None}  # fewstep's SANA conditioner encodes prompts without it
    return {}


def latent_size_multiple(pipe: Any, family: ExportFamily) -> int:
    """Latent height/width must be a multiple of this for the pipeline to accept the size."""
    scale = getattr(pipe, "vae_scale_factor", 1) or 1
    return max(1, family.pixel_multiple // scale)


def network_of(pipe: Any, family: ExportFamily) -> torch.nn.Module:
    return getattr(pipe, family.network)


@torch.no_grad()
def generate(pipe: Any, family: ExportFamily, spec: FewStepScheduler, num_steps: int, latents: Tensor, *,
             prompts: Sequence[str] | None = None, class_labels: Tensor | None = None,
             generator: torch.Generator | None = None, guidance_scale: float | None = None,
             **call_kwargs: Any) -> Tensor:
    """Run the exported pipeline for `num_steps` from `latents` ((B, C, H, W), already at the start noise
    level) and return the final latents in (B, C, H, W), as the student's sampler returns them."""
    schedule = spec.set_timesteps_kwargs(num_steps)
    dtype = network_of(pipe, family).dtype
    if not family.text:
        if class_labels is None and family.name == "dit":
            raise ValueError("DiT exports are class-conditional: pass class_labels")
        return scheduler_loop(network_of(pipe, family), family, pipe.scheduler, schedule, latents.to(dtype),
                              class_labels, generator)
    if prompts is None:
        raise ValueError(f"{family.name} exports are text-conditional: pass prompts")
    kwargs: dict[str, Any] = dict(prompt=list(prompts), num_inference_steps=num_steps, output_type="latent",
                                  generator=generator, **schedule)
    kwargs["guidance_scale"] = spec.guidance_scale if guidance_scale is None else guidance_scale
    kwargs.update(call_kwargs)
    h, w = latents.shape[-2:]
    scale = pipe.vae_scale_factor
    kwargs.setdefault("height", h * scale)
    kwargs.setdefault("width", w * scale)
    if family.name == "flux":
        from ..models.flux import pack_latents, unpack_latents

        out = pipe(latents=pack_latents(latents.to(dtype)), **kwargs).images
        return unpack_latents(out, h, w)
    if family.name == "sana":
        kwargs.setdefault("use_resolution_binning", False)
    return pipe(latents=latents.to(dtype), **kwargs).images


@torch.no_grad()
def scheduler_loop(network: torch.nn.Module, family: ExportFamily, scheduler: Any, schedule: dict[str, list],
                   latents: Tensor, class_labels: Tensor | None, generator: torch.Generator | None) -> Tensor:
    """DiTPipeline's / DDPMPipeline's denoising loop with custom timesteps and class labels:
    set_timesteps -> (model, scheduler.step) per timestep. Uses only diffusers objects."""
    scheduler.set_timesteps(**schedule, device=latents.device)
    x = latents * getattr(scheduler, "init_noise_sigma", 1.0)
    channels = x.shape[1]
    scale_input = getattr(scheduler, "scale_model_input", lambda sample, _t: sample)  # FlowMatch has none
    for t in scheduler.timesteps:
        model_input = scale_input(x, t)
        timestep = t.expand(x.shape[0]).to(latents.device)
        if family.name == "dit":
            out = network(model_input, timestep=timestep, class_labels=class_labels).sample
            out = out[:, :channels]  # learned-sigma checkpoints: keep the eps / native half, as DiTPipeline
        else:
            out = network(model_input, timestep, class_labels=class_labels).sample
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


@torch.no_grad()
def decode(pipe: Any, latents: Tensor) -> Tensor:
    """Latents -> images in [-1, 1] with the pipeline's VAE (pixel-space pipelines return the input)."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return latents.float()
    from ..models.encoders import LatentCodec

    return LatentCodec(vae).decode(latents.to(vae.dtype)).float()
