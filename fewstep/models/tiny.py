"""Tiny, seeded, random-weight versions of every supported family, built offline.

Used by every end-to-end and export test: each network runs a forward on CPU in milliseconds, the
tokenizers are real transformers tokenizers built from hand-written vocabularies (no downloads), and
`tiny_pipeline_components(family)` returns exactly the kwargs the family's diffusers pipeline takes.
All tiny latents are (4, 8, 8); tiny images are (3, 16, 16) (VAE factor 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .base import Cond
from .adapter import DiffusersDenoiser

LATENT_CHANNELS = 4
LATENT_SIZE = 8
IMAGE_SIZE = 16
CLIP_L_DIM, CLIP_G_DIM, T5_DIM, GEMMA_DIM = 16, 24, 48, 16
CLIP_MAX_LENGTH = 16  # tokenizer.model_max_length; real CLIP uses 77
T5_MAX_LENGTH = 12  # pass as max_sequence_length to the FLUX / SD3 / SANA encoders
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic init without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _build(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    with _seeded(seed):
        return factory().eval()


# ---------------- tokenizers ----------------
def _byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP byte->unicode table: printable bytes map to themselves, the rest to U+0100.."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    codes = dict(zip(keep, keep)) | {b: 256 + i for i, b in enumerate(extra)}
    return [chr(codes[b]) for b in range(256)]


def tiny_clip_tokenizer(model_max_length: int = CLIP_MAX_LENGTH):
    """A real CLIPTokenizer loaded from a hand-written vocab.json + merges.txt (bytes, bytes+</w>, a few merges)."""
    from transformers import CLIPTokenizer

    chars = _byte_level_alphabet()
    merges = ["t h", "th e</w>", "a n", "c a", "ca t</w>", "d o", "do g</w>"]
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = T5_MAX_LENGTH):
    """A real (Unigram) T5Tokenizer over lowercase letters, built in memory."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in _LETTERS] + [("▁" + c, -2.5) for c in _LETTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def tiny_gemma_tokenizer():
    """A real (BPE, byte-fallback) GemmaTokenizer over lowercase letters, built in memory."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(_LETTERS) + ["▁"])}
    return GemmaTokenizer(vocab=vocab)


# ---------------- text encoders / VAE ----------------
def tiny_clip_text_model(hidden_size: int = CLIP_L_DIM, with_projection: bool = False, seed: int = 0) -> nn.Module:
    """CLIPTextModel (SD 1.5, FLUX pooled) or CLIPTextModelWithProjection (SDXL / SD3 encoder 2, SD3 L)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = tiny_clip_tokenizer()
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH,
                         projection_dim=hidden_size, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _build(lambda: cls(cfg), seed)


def tiny_t5_encoder(seed: int = 0) -> nn.Module:
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=len(tiny_t5_tokenizer()), d_model=T5_DIM, d_kv=8, d_ff=2 * T5_DIM, num_layers=1,
                   num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return _build(lambda: T5EncoderModel(cfg), seed)


def tiny_gemma2_encoder(seed: int = 0) -> nn.Module:
    from transformers import Gemma2Config, Gemma2Model

    cfg = Gemma2Config(vocab_size=len(tiny_gemma_tokenizer()), hidden_size=GEMMA_DIM, intermediate_size=2 * GEMMA_DIM,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                       max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return _build(lambda: Gemma2Model(cfg), seed)


def tiny_vae(latent_channels: int = LATENT_CHANNELS, scaling_factor: float = 0.5, shift_factor: float | None = None,
             seed: int = 0) -> nn.Module:
    """AutoencoderKL with factor 2: (3, 16, 16) images <-> (latent_channels, 8, 8) latents."""
    from diffusers import AutoencoderKL

    return _build(lambda: AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor, shift_factor=shift_factor), seed)


def tiny_autoencoder_dc(seed: int = 0) -> nn.Module:
    """AutoencoderDC (SANA's VAE) with factor 2."""
    from diffusers import AutoencoderDC

    return _build(lambda: AutoencoderDC(
        in_channels=3, latent_channels=LATENT_CHANNELS, attention_head_dim=4,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1), encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()),
        scaling_factor=0.5), seed)


# ---------------- denoising networks ----------------
def tiny_unet2d(num_classes: int | None = 10, in_channels: int = LATENT_CHANNELS, sample_size: int = LATENT_SIZE,
                seed: int = 0) -> nn.Module:
    """UNet2DModel; class-conditional with a null row (num_class_embeds = num_classes + 1) unless None."""
    from diffusers import UNet2DModel

    return _build(lambda: UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
        num_class_embeds=None if num_classes is None else num_classes + 1), seed)


def tiny_unet2d_condition(sdxl: bool = False, seed: int = 0) -> nn.Module:
    """UNet2DConditionModel, SD 1.5 layout (cross-attn on CLIP-L) or SDXL (CLIP-L+G, text_time embedding)."""
    from diffusers import UNet2DConditionModel

    extra: dict[str, Any] = {}
    if sdxl:
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=4,
                     projection_class_embeddings_input_dim=CLIP_G_DIM + 6 * 4)
    return _build(lambda: UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4, attention_head_dim=4,
        cross_attention_dim=CLIP_L_DIM + (CLIP_G_DIM if sdxl else 0), **extra), seed)


def tiny_sd3_transformer(seed: int = 0) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    return _build(lambda: SD3Transformer2DModel(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=T5_DIM,
        caption_projection_dim=16, pooled_projection_dim=CLIP_L_DIM + CLIP_G_DIM, pos_embed_max_size=16), seed)


def tiny_flux_transformer(guidance_embeds: bool = True, seed: int = 0) -> nn.Module:
    """FLUX-dev style (guidance-distilled) by default; guidance_embeds=False is schnell style."""
    from diffusers import FluxTransformer2DModel

    return _build(lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=T5_DIM, pooled_projection_dim=CLIP_L_DIM,
        guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4)), seed)


def tiny_sana_transformer(guidance_embeds: bool = False, seed: int = 0) -> nn.Module:
    from diffusers import SanaTransformer2DModel

    return _build(lambda: SanaTransformer2DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=2, attention_head_dim=8,
        num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
        caption_channels=GEMMA_DIM, sample_size=LATENT_SIZE, patch_size=1, guidance_embeds=guidance_embeds), seed)


def tiny_dit(num_classes: int = 10, learn_sigma: bool = True, seed: int = 0) -> nn.Module:
    from diffusers import DiTTransformer2DModel

    return _build(lambda: DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS * (2 if learn_sigma else 1), num_layers=2, sample_size=LATENT_SIZE,
        patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=4), seed)


# ---------------- schedulers and whole pipelines ----------------
def tiny_scheduler(family: str):
    """The scheduler each family's real checkpoints ship (configs as in the hub releases)."""
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                           FlowMatchEulerDiscreteScheduler)

    sd_betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if family == "sd15":
        return DDIMScheduler(**sd_betas, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if family == "sdxl":
        return EulerDiscreteScheduler(**sd_betas, timestep_spacing="leading", steps_offset=1)
    if family == "sd3":
        return FlowMatchEulerDiscreteScheduler(shift=3.0)
    if family == "flux":
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)
    if family == "sana":
        return DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    if family == "dit":
        return DDIMScheduler(clip_sample=False)
    if family == "ddpm":
        return DDPMScheduler()
    raise ValueError(f"unknown family {family!r}; allowed: {', '.join(PIPELINE_FAMILIES)}")


PIPELINE_FAMILIES = ("ddpm", "sd15", "sdxl", "sd3", "flux", "sana", "dit")


def tiny_pipeline_components(family: str, seed: int = 0) -> dict[str, Any]:
    """kwargs for the family's diffusers pipeline class (see `tiny_pipeline`)."""
    if family not in PIPELINE_FAMILIES:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(PIPELINE_FAMILIES)}")
    scheduler = tiny_scheduler(family)
    if family == "ddpm":
        unet = tiny_unet2d(num_classes=None, in_channels=3, sample_size=IMAGE_SIZE, seed=seed)
        return dict(unet=unet, scheduler=scheduler)
    if family == "dit":
        # DiTPipeline hard-codes the null label 1000 (ImageNet), so its transformer needs 1000 classes
        return dict(transformer=tiny_dit(num_classes=1000, seed=seed), vae=tiny_vae(seed=seed + 1), scheduler=scheduler)
    if family == "sd15":
        return dict(unet=tiny_unet2d_condition(seed=seed), vae=tiny_vae(seed=seed + 1), scheduler=scheduler,
                    text_encoder=tiny_clip_text_model(seed=seed + 2), tokenizer=tiny_clip_tokenizer(),
                    safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    if family == "sdxl":
        return dict(unet=tiny_unet2d_condition(sdxl=True, seed=seed), vae=tiny_vae(seed=seed + 1), scheduler=scheduler,
                    text_encoder=tiny_clip_text_model(seed=seed + 2), tokenizer=tiny_clip_tokenizer(),
                    text_encoder_2=tiny_clip_text_model(CLIP_G_DIM, with_projection=True, seed=seed + 3),
                    tokenizer_2=tiny_clip_tokenizer(), image_encoder=None, feature_extractor=None)
    if family == "sd3":
        return dict(transformer=tiny_sd3_transformer(seed=seed), vae=tiny_vae(shift_factor=0.1, seed=seed + 1),
                    scheduler=scheduler, text_encoder=tiny_clip_text_model(with_projection=True, seed=seed + 2),
                    tokenizer=tiny_clip_tokenizer(),
                    text_encoder_2=tiny_clip_text_model(CLIP_G_DIM, with_projection=True, seed=seed + 3),
                    tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=tiny_t5_encoder(seed=seed + 4),
                    tokenizer_3=tiny_t5_tokenizer())
    if family == "flux":
        return dict(transformer=tiny_flux_transformer(seed=seed), vae=tiny_vae(shift_factor=0.1, seed=seed + 1),
                    scheduler=scheduler, text_encoder=tiny_clip_text_model(seed=seed + 2),
                    tokenizer=tiny_clip_tokenizer(), text_encoder_2=tiny_t5_encoder(seed=seed + 4),
                    tokenizer_2=tiny_t5_tokenizer())
    return dict(transformer=tiny_sana_transformer(seed=seed), vae=tiny_autoencoder_dc(seed=seed + 1),
                scheduler=scheduler, text_encoder=tiny_gemma2_encoder(seed=seed + 2), tokenizer=tiny_gemma_tokenizer())


PIPELINE_CLASSES = {"ddpm": "DDPMPipeline", "sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
                    "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline", "sana": "SanaPipeline",
                    "dit": "DiTPipeline"}


def tiny_pipeline(family: str, seed: int = 0):
    """The family's real diffusers pipeline around the tiny components (save_pretrained-able)."""
    import diffusers

    components = tiny_pipeline_components(family, seed)
    return getattr(diffusers, PIPELINE_CLASSES[family])(**components)


# ---------------- denoisers with example conditioning ----------------
KIND_OF_FAMILY = {"ddpm": "unet2d", "sd15": "unet2d_condition", "sdxl": "unet2d_condition", "sd3": "sd3",
                  "flux": "flux", "sana": "sana", "dit": "dit"}


def tiny_sample_shape(kind: str) -> tuple[int, int, int]:
    """(C, H, W) of x_t for `tiny_denoiser(kind)`."""
    return (LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)


def tiny_denoiser(kind: str, batch_size: int = 2, seed: int = 0, **options: Any) -> tuple[DiffusersDenoiser, Cond]:
    """(denoiser, example cond for `batch_size` samples) with random embeddings and a stored null cond.

    The path / prediction type come from the family's tiny scheduler exactly as load_denoiser reads them.
    options: unet2d: num_classes (None = unconditional); unet2d_condition: sdxl; flux: guidance_embeds;
    sana: guidance_embeds; dit: num_classes, learn_sigma.
    """
    from .registry import build_denoiser
    from .schedule import path_from_scheduler_config

    builders: dict[str, tuple[Callable[..., nn.Module], str]] = {
        "unet2d": (tiny_unet2d, "ddpm"), "unet2d_condition": (tiny_unet2d_condition, "sd15"),
        "sd3": (tiny_sd3_transformer, "sd3"), "flux": (tiny_flux_transformer, "flux"),
        "sana": (tiny_sana_transformer, "sana"), "dit": (tiny_dit, "dit")}
    if kind not in builders:
        raise ValueError(f"unknown model kind {kind!r}; allowed kinds: {', '.join(builders)}")
    make, family = builders[kind]
    if kind == "unet2d_condition" and options.get("sdxl"):
        family = "sdxl"
    model = make(seed=seed, **options)
    path, prediction_type = path_from_scheduler_config(tiny_scheduler(family))
    denoiser = build_denoiser(kind, model, path, prediction_type)
    with _seeded(seed + 100):
        cond, null = _example_cond(denoiser, batch_size)
    if null:
        denoiser.set_null_cond(null)
    return denoiser, cond


def _example_cond(denoiser: DiffusersDenoiser, b: int) -> tuple[Cond, Cond]:
    """Random conditioning with the family's shapes, and a batch-1 null (empty prompt) counterpart."""
    kind = denoiser.kind
    if kind in ("unet2d", "dit"):
        n = getattr(denoiser, "num_classes", None)
        return ({} if n is None else {"class_labels": torch.randint(0, n, (b,))}), {}
    text: dict[str, tuple[int, ...]] = {}
    extra: Cond = {}
    if kind == "unet2d_condition":
        sdxl = denoiser.is_sdxl
        text["encoder_hidden_states"] = (CLIP_MAX_LENGTH, CLIP_L_DIM + (CLIP_G_DIM if sdxl else 0))
        if sdxl:
            text["text_embeds"] = (CLIP_G_DIM,)
            size_crop_size = [IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE]
            extra["time_ids"] = torch.tensor([size_crop_size] * b, dtype=torch.float32)
    elif kind == "sd3":
        text = {"encoder_hidden_states": (CLIP_MAX_LENGTH + T5_MAX_LENGTH, T5_DIM),
                "pooled_projections": (CLIP_L_DIM + CLIP_G_DIM,)}
    elif kind == "flux":
        text = {"encoder_hidden_states": (T5_MAX_LENGTH, T5_DIM), "pooled_projections": (CLIP_L_DIM,)}
        if denoiser.has_guidance:
            extra["guidance"] = torch.full((b,), 3.5)
    elif kind == "sana":
        text = {"encoder_hidden_states": (T5_MAX_LENGTH, GEMMA_DIM)}
        extra["encoder_attention_mask"] = torch.ones(b, T5_MAX_LENGTH, dtype=torch.long)
        if denoiser.has_guidance:
            extra["guidance"] = torch.full((b,), 4.5)
    cond = {k: torch.randn(b, *shape) for k, shape in text.items()} | extra
    null = {k: torch.randn(1, *shape) for k, shape in text.items()}
    if kind == "sana":
        null["encoder_attention_mask"] = torch.ones(1, T5_MAX_LENGTH, dtype=torch.long)
    return cond, null
