"""Text conditioners produce what each family's denoiser takes (checked against hand-run encoders), cache,
and supply the pipeline's empty-prompt null cond; LatentCodec applies the VAE scaling like the pipelines."""

from __future__ import annotations

import pytest
import torch

from fewstep.models import build_denoiser
from fewstep.models.encoders import LatentCodec, build_conditioner
from fewstep.models.tiny import (T5_MAX_LENGTH, tiny_autoencoder_dc, tiny_clip_tokenizer, tiny_pipeline_components,
                                 tiny_vae)

TEXT_COMPONENTS = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "tokenizer_3", "text_encoder_3")
NETWORK = {"sd15": ("unet2d_condition", "unet"), "sdxl": ("unet2d_condition", "unet"), "sd3": ("sd3", "transformer"),
           "flux": ("flux", "transformer"), "sana": ("sana", "transformer")}
OPTIONS = {"sd15": {}, "sdxl": {"size": (16, 16)}, "sd3": {"max_sequence_length": T5_MAX_LENGTH},
           "flux": {"max_sequence_length": T5_MAX_LENGTH, "guidance": 3.5},
           "sana": {"max_sequence_length": T5_MAX_LENGTH}}


def _conditioner(family, **extra):
    comps = tiny_pipeline_components(family)
    text = {k: v for k, v in comps.items() if k in TEXT_COMPONENTS}
    return build_conditioner(family, **text, **OPTIONS[family], **extra), comps


@pytest.mark.parametrize("family", list(NETWORK))
def test_conditioner_feeds_the_denoiser_with_cfg(family):
    conditioner, comps = _conditioner(family)
    kind, net = NETWORK[family]
    denoiser = build_denoiser(kind, comps[net])
    cond = conditioner(["the cat", "a dog"])
    denoiser.set_null_cond(conditioner.null_cond())
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100.0, 600.0]) if denoiser.path.name == "vp" else torch.tensor([0.4, 0.8])
    with torch.no_grad():
        out = denoiser.guided(x, t, cond, 2.0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not any(p.requires_grad for p in conditioner.pipeline.text_encoder.parameters())


def test_sd15_embeddings_equal_hand_run_clip():
    conditioner, comps = _conditioner("sd15")
    tok, enc = comps["tokenizer"], comps["text_encoder"]
    ids = tok(["the cat", ""], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        ref = enc(ids)[0]
    torch.testing.assert_close(conditioner(["the cat"])["encoder_hidden_states"], ref[:1])
    torch.testing.assert_close(conditioner.null_cond()["encoder_hidden_states"], ref[1:])


def test_cache_encodes_each_prompt_once_and_matches_uncached():
    conditioner, comps = _conditioner("sd15")
    calls = []
    comps["text_encoder"].register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)
    first = conditioner(["a dog", "the cat", "a dog"])
    second = conditioner(["the cat"])
    assert len(calls) == 1
    uncached, _ = _conditioner("sd15", cache=False)
    torch.testing.assert_close(first["encoder_hidden_states"],
                               uncached(["a dog", "the cat", "a dog"])["encoder_hidden_states"])
    torch.testing.assert_close(second["encoder_hidden_states"], first["encoder_hidden_states"][1:2])


def test_sdxl_time_ids_and_zeroed_empty_prompt():
    conditioner, _ = _conditioner("sdxl")
    cond = conditioner(["the cat", "a dog"])
    assert cond["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    null = conditioner.null_cond()
    assert set(null) == {"encoder_hidden_states", "text_embeds"}
    assert all(v.abs().sum() == 0 for v in null.values())  # force_zeros_for_empty_prompt
    encoded, _ = _conditioner("sdxl", force_zeros_for_empty_prompt=False)
    assert encoded.null_cond()["text_embeds"].abs().sum() > 0


def test_flux_guidance_and_sana_mask():
    flux, _ = _conditioner("flux")
    cond = flux(["the cat", "a dog"])
    assert cond["guidance"].tolist() == [3.5, 3.5] and cond["encoder_hidden_states"].shape[1] == T5_MAX_LENGTH
    assert "guidance" not in flux.null_cond()
    sana, _ = _conditioner("sana")
    cond = sana(["the cat"])
    assert cond["encoder_attention_mask"].shape == (1, T5_MAX_LENGTH)
    assert cond["encoder_attention_mask"].sum() == len(sana.pipeline.tokenizer("the cat").input_ids)


def test_conditioner_errors_name_the_fix():
    with pytest.raises(ValueError, match="allowed: sd15, sdxl, sd3, flux, sana"):
        build_conditioner("dit")
    with pytest.raises(ValueError, match="needs components"):
        build_conditioner("sd15", tokenizer=tiny_clip_tokenizer())


def test_conditioner_from_saved_pipeline(tmp_path):
    from fewstep.models.encoders import SDXLConditioner
    from fewstep.models.tiny import tiny_pipeline

    tiny_pipeline("sdxl").save_pretrained(tmp_path)
    conditioner = SDXLConditioner.from_pretrained(str(tmp_path), size=(16, 16))
    reference, _ = _conditioner("sdxl")
    torch.testing.assert_close(conditioner(["the cat"])["text_embeds"], reference(["the cat"])["text_embeds"])


@pytest.mark.parametrize("make", [lambda: tiny_vae(shift_factor=0.1), tiny_autoencoder_dc], ids=["kl", "dc"])
def test_latent_codec_scaling_matches_pipeline_formula(make):
    vae = make()
    codec = LatentCodec(vae)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = codec.encode(images)
    with torch.no_grad():
        out = vae.encode(images)
        raw = out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latent
        shift = vae.config.get("shift_factor") or 0.0
        torch.testing.assert_close(latents, (raw - shift) * vae.config.scaling_factor)
        decoded = codec.decode(latents)
        torch.testing.assert_close(decoded, vae.decode(raw).sample, rtol=1e-4, atol=1e-5)
    assert latents.shape == (2, 4, 8, 8) and decoded.shape == images.shape
