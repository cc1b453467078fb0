"""Frozen conditioning encoders: prompts -> the cond dict a Denoiser takes, and images <-> latents.

Thin on purpose: each text conditioner builds the family's own diffusers pipeline from just its
tokenizers and text encoders and calls that pipeline's `encode_prompt`, so prompt handling (CLIP
penultimate layers, SD3's padding and concatenation, SANA's token selection, SDXL's zeroed empty
prompt) is exactly the pipeline's. Encoders run in eval mode under no_grad and can cache per prompt.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from .base import Cond


class TextConditioner:
    """Base: `cond = conditioner(prompts)`, `denoiser.set_null_cond(conditioner.null_cond())`.

    Subclasses name their pipeline class and the components it needs, and map encode_prompt's outputs
    to cond keys. `cache=True` keeps each prompt's batch-1 cond, so a fixed prompt set is encoded once.
    """

    pipeline_class: ClassVar[str]
    components: ClassVar[tuple[str, ...]]
    # components the pipeline constructor requires that the text side does not use
    unused: ClassVar[tuple[str, ...]] = ("vae", "transformer", "scheduler")
    # optional components not to load in from_pretrained
    skipped_on_load: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cache: bool = True, device: torch.device | str | None = None, **components: Any):
        import diffusers

        missing = [c for c in self.components if components.get(c) is None]
        if missing:
            raise ValueError(f"{type(self).__name__} needs components {missing}; got {sorted(components)}")
        kwargs = {c: components[c] for c in self.components} | {c: None for c in self.unused}
        kwargs |= self.pipeline_kwargs(components)
        self.pipeline = getattr(diffusers, self.pipeline_class)(**kwargs)
        for name in self.components:
            module = components[name]
            if isinstance(module, nn.Module):
                module.eval().requires_grad_(False)
        self.device = torch.device(device) if device is not None else None
        self.cache: dict[str, Cond] | None = {} if cache else None

    @classmethod
    def from_pretrained(cls, pretrained: str, dtype: torch.dtype | None = None, **kwargs: Any) -> "TextConditioner":
        """Load only the tokenizers / text encoders of a pipeline folder or hub id."""
        import diffusers

        from .registry import _check_reachable

        _check_reachable(pretrained)
        pipe_cls = getattr(diffusers, cls.pipeline_class)
        skip = {name: None for name in cls.unused + cls.skipped_on_load}
        pipe = pipe_cls.from_pretrained(pretrained, torch_dtype=dtype, **skip)
        return cls(**{c: getattr(pipe, c) for c in cls.components}, **(cls.options_from(pipe) | kwargs))

    @classmethod
    def options_from(cls, pipeline: Any) -> dict[str, Any]:
        """Conditioner options stored in a loaded pipeline's config (model_index.json)."""
        return {}

    def pipeline_kwargs(self, components: dict[str, Any]) -> dict[str, Any]:
        """Extra constructor kwargs for the pipeline (optional components set to None)."""
        return {}

    # ---- public API ----
    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str]) -> Cond:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        if self.cache is None:
            return self.encode(prompts)
        todo = sorted({p for p in prompts if p not in self.cache})
        if todo:
            fresh = self.encode(todo)
            for i, prompt in enumerate(todo):
                self.cache[prompt] = {k: v[i : i + 1] for k, v in fresh.items()}
        rows = [self.cache[p] for p in prompts]
        return {k: torch.cat([row[k] for row in rows]) for k in rows[0]}

    @torch.no_grad()
    def null_cond(self) -> Cond:
        """Batch-1 embeddings of the empty / negative prompt, as the pipeline builds them for CFG."""
        return self.encode_null()

    def encode(self, prompts: list[str]) -> Cond:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_null(self) -> Cond:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def execution_device(self) -> torch.device:
        return self.device or self.pipeline._execution_device


class SD15Conditioner(TextConditioner):
    """SD 1.x / 2.x: CLIP last hidden state -> encoder_hidden_states."""

    pipeline_class = "StableDiffusionPipeline"
    components = ("tokenizer", "text_encoder")
    unused = ("vae", "unet", "scheduler", "safety_checker", "feature_extractor")
    skipped_on_load = ("image_encoder",)

    def pipeline_kwargs(self, components: dict[str, Any]) -> dict[str, Any]:
        return {"requires_safety_checker": False}

    def _prompt(self, prompts: list[str], cfg: bool) -> tuple[Tensor, Tensor | None]:
        return self.pipeline.encode_prompt(prompts, self.execution_device, 1, do_classifier_free_guidance=cfg)

    def encode(self, prompts: list[str]) -> Cond:
        return {"encoder_hidden_states": self._prompt(prompts, False)[0]}

    def encode_null(self) -> Cond:
        return {"encoder_hidden_states": self._prompt([""], True)[1]}


class SDXLConditioner(TextConditioner):
    """SDXL: CLIP-L + CLIP-G penultimate states, pooled CLIP-G text_embeds, and size/crop time_ids.

    time_ids = original_size + crop_top_left + target_size (the SDXL micro-conditioning), one row per
    sample. The null cond follows the pipeline's force_zeros_for_empty_prompt setting.
    """

    pipeline_class = "StableDiffusionXLPipeline"
    components = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    unused = ("vae", "unet", "scheduler")
    skipped_on_load = ("image_encoder", "feature_extractor")

    def __init__(self, cache: bool = True, device: torch.device | str | None = None,
                 size: tuple[int, int] = (1024, 1024), crop_top_left: tuple[int, int] = (0, 0),
                 force_zeros_for_empty_prompt: bool = True, **components: Any):
        self.time_ids = torch.tensor([[*size, *crop_top_left, *size]], dtype=torch.float32)
        self.force_zeros = force_zeros_for_empty_prompt
        super().__init__(cache, device, **components)

    def pipeline_kwargs(self, components: dict[str, Any]) -> dict[str, Any]:
        return {"force_zeros_for_empty_prompt": self.force_zeros}

    @classmethod
    def options_from(cls, pipeline: Any) -> dict[str, Any]:
        return {"force_zeros_for_empty_prompt": bool(pipeline.config.force_zeros_for_empty_prompt)}

    def _prompt(self, prompts: list[str], cfg: bool) -> tuple[Tensor, ...]:
        return self.pipeline.encode_prompt(prompts, device=self.execution_device, num_images_per_prompt=1,
                                           do_classifier_free_guidance=cfg)

    def encode(self, prompts: list[str]) -> Cond:
        embeds, _, pooled, _ = self._prompt(prompts, False)
        return {"encoder_hidden_states": embeds, "text_embeds": pooled,
                "time_ids": self.time_ids.to(embeds.device).expand(len(prompts), -1)}

    def encode_null(self) -> Cond:
        _, neg, _, neg_pooled = self._prompt([""], True)
        return {"encoder_hidden_states": neg, "text_embeds": neg_pooled}


class SD3Conditioner(TextConditioner):
    """SD3 / 3.5: CLIP-L + CLIP-G (padded) concatenated with T5 along the sequence, pooled CLIP-L|G."""

    pipeline_class = "StableDiffusion3Pipeline"
    components = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "tokenizer_3", "text_encoder_3")
    skipped_on_load = ("image_encoder", "feature_extractor")

    def __init__(self, cache: bool = True, device: torch.device | str | None = None, max_sequence_length: int = 256,
                 **components: Any):
        self.max_sequence_length = max_sequence_length
        super().__init__(cache, device, **components)

    def _prompt(self, prompts: list[str], cfg: bool) -> tuple[Tensor, ...]:
        return self.pipeline.encode_prompt(prompts, None, None, device=self.execution_device, num_images_per_prompt=1,
                                           do_classifier_free_guidance=cfg,
                                           max_sequence_length=self.max_sequence_length)

    def encode(self, prompts: list[str]) -> Cond:
        embeds, _, pooled, _ = self._prompt(prompts, False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def encode_null(self) -> Cond:
        _, neg, _, neg_pooled = self._prompt([""], True)
        return {"encoder_hidden_states": neg, "pooled_projections": neg_pooled}


class FluxConditioner(TextConditioner):
    """FLUX.1: T5 sequence -> encoder_hidden_states, CLIP pooled -> pooled_projections.

    `guidance` (FLUX-dev's embedded guidance scale) adds cond["guidance"] per sample when set; txt_ids
    are all zeros in FLUX, so the denoiser builds them and they are not part of the cond.
    """

    pipeline_class = "FluxPipeline"
    components = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
    skipped_on_load = ("image_encoder", "feature_extractor")

    def __init__(self, cache: bool = True, device: torch.device | str | None = None, max_sequence_length: int = 512,
                 guidance: float | None = None, **components: Any):
        self.max_sequence_length = max_sequence_length
        self.guidance = guidance
        super().__init__(cache, device, **components)

    def _embed(self, prompts: list[str]) -> Cond:
        embeds, pooled, _ = self.pipeline.encode_prompt(prompts, None, device=self.execution_device,
                                                        num_images_per_prompt=1,
                                                        max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def encode(self, prompts: list[str]) -> Cond:
        cond = self._embed(prompts)
        if self.guidance is not None:
            cond["guidance"] = torch.full((len(prompts),), float(self.guidance),
                                          device=cond["pooled_projections"].device)
        return cond

    def encode_null(self) -> Cond:
        return self._embed([""])


class SanaConditioner(TextConditioner):
    """SANA: decoder-only LM (Gemma-2) hidden states + attention mask; the pipeline's token selection.

    Pass complex_human_instruction=SanaPipeline's default list to match SANA's released sampling; the
    negative / empty prompt is encoded without it, as in SanaPipeline.
    """

    pipeline_class = "SanaPipeline"
    components = ("tokenizer", "text_encoder")

    def __init__(self, cache: bool = True, device: torch.device | str | None = None, max_sequence_length: int = 300,
                 complex_human_instruction: list[str] | None = None, **components: Any):
        self.max_sequence_length = max_sequence_length
        self.complex_human_instruction = complex_human_instruction
        super().__init__(cache, device, **components)

    def _prompt(self, prompts: list[str], cfg: bool) -> tuple[Tensor, ...]:
        return self.pipeline.encode_prompt(prompts, do_classifier_free_guidance=cfg, negative_prompt="",
                                           num_images_per_prompt=1, device=self.execution_device,
                                           max_sequence_length=self.max_sequence_length,
                                           complex_human_instruction=self.complex_human_instruction)

    def encode(self, prompts: list[str]) -> Cond:
        embeds, mask, _, _ = self._prompt(prompts, False)
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def encode_null(self) -> Cond:
        _, _, neg, neg_mask = self._prompt([""], True)
        return {"encoder_hidden_states": neg, "encoder_attention_mask": neg_mask}


CONDITIONERS: dict[str, type[TextConditioner]] = {
    "sd15": SD15Conditioner, "sdxl": SDXLConditioner, "sd3": SD3Conditioner, "flux": FluxConditioner,
    "sana": SanaConditioner,
}


def build_conditioner(family: str, **components: Any) -> TextConditioner:
    """The text conditioner for a pipeline family from its tokenizers / text encoders (+ options)."""
    if family not in CONDITIONERS:
        raise ValueError(f"unknown text-conditioning family {family!r}; allowed: {', '.join(CONDITIONERS)} "
                         "(class-conditional unet2d / dit models take cond={'class_labels': labels})")
    return CONDITIONERS[family](**components)


class LatentCodec(nn.Module):
    """Frozen VAE: images in [-1, 1] <-> the latents a teacher was trained on.

    latents = (encode(x) - shift_factor) * scaling_factor, as every diffusers pipeline does; works for
    AutoencoderKL (mean or a sample of the posterior) and AutoencoderDC (deterministic).
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def encode(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        out = self.vae.encode(images.to(dtype))
        dist = getattr(out, "latent_dist", None)
        raw = out.latent if dist is None else (dist.sample(generator) if sample else dist.mode())
        return ((raw - self.shift_factor) * self.scaling_factor).to(images.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        """Differentiable in the latents (pixel-space losses); wrap in no_grad for plain sampling."""
        dtype = next(self.vae.parameters()).dtype
        raw = latents.to(dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(raw).sample.to(latents.dtype)
