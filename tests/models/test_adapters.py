"""Every adapter: shapes, dtype handling, same output as calling the diffusers network by hand, CFG algebra,
feature taps, cond validation and the kind registry."""

from __future__ import annotations

import pytest
import torch

from fewstep.models import build_denoiser
from fewstep.models.flux import latent_image_ids, pack_latents, unpack_latents
from fewstep.models.tiny import tiny_denoiser, tiny_sample_shape, tiny_unet2d

VARIANTS = [
    ("unet2d", {}), ("unet2d", {"num_classes": None}), ("unet2d_condition", {}), ("unet2d_condition", {"sdxl": True}),
    ("sd3", {}), ("flux", {}), ("flux", {"guidance_embeds": False}), ("sana", {}), ("sana", {"guidance_embeds": True}),
    ("dit", {}), ("dit", {"learn_sigma": False}),
]
CONDITIONAL = [v for v in VARIANTS if v != ("unet2d", {"num_classes": None})]


def _ids(variants):
    return [k + "".join(f"-{o}={v}" for o, v in opts.items()) for k, opts in variants]


def _inputs(denoiser, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *tiny_sample_shape(denoiser.kind), generator=g)
    t = torch.tensor([37.0, 801.0]) if denoiser.path.name == "vp" else torch.tensor([0.23, 0.91])
    return x, t[:batch]


def _by_hand(denoiser, x, t, cond):
    """The diffusers network called directly with its pipeline's argument conventions."""
    m, kind = denoiser.model, denoiser.kind
    if kind == "unet2d":
        return m(x, t, class_labels=cond.get("class_labels")).sample
    if kind == "unet2d_condition":
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]} if "time_ids" in cond else None
        return m(x, t, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs=added).sample
    if kind == "sd3":
        return m(x, encoder_hidden_states=cond["encoder_hidden_states"], pooled_projections=cond["pooled_projections"],
                 timestep=t * 1000).sample
    if kind == "flux":
        from diffusers import FluxPipeline

        b, c, h, w = x.shape
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        txt_ids = torch.zeros(cond["encoder_hidden_states"].shape[1], 3)
        out = m(packed, encoder_hidden_states=cond["encoder_hidden_states"],
                pooled_projections=cond["pooled_projections"],
                timestep=t * 1000 / 1000, img_ids=ids, txt_ids=txt_ids, guidance=cond.get("guidance")).sample
        return FluxPipeline._unpack_latents(out, h, w, vae_scale_factor=1)
    if kind == "sana":
        guidance = cond["guidance"] * m.config.guidance_embeds_scale if "guidance" in cond else None
        return m(x, encoder_hidden_states=cond["encoder_hidden_states"],
                 encoder_attention_mask=cond["encoder_attention_mask"],
                 timestep=t * 1000 * m.config.timestep_scale, guidance=guidance).sample
    if kind == "dit":
        out = m(x, timestep=t, class_labels=cond["class_labels"]).sample
        return torch.split(out, x.shape[1], dim=1)[0] if out.shape[1] == 2 * x.shape[1] else out
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,opts", VARIANTS, ids=_ids(VARIANTS))
def test_output_shape_and_matches_direct_call(kind, opts):
    denoiser, cond = tiny_denoiser(kind, **opts)
    x, t = _inputs(denoiser)
    with torch.no_grad():
        out = denoiser(x, t, cond)
        ref = _by_hand(denoiser, x, t, cond)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_scalar_time_broadcasts_and_bad_time_shape_errors():
    denoiser, cond = tiny_denoiser("dit")
    x, _ = _inputs(denoiser)
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x, torch.tensor(500.0), cond),
                                   denoiser(x, torch.tensor([500.0, 500.0]), cond))
        with pytest.raises(ValueError, match="t must be a scalar"):
            denoiser(x, torch.tensor([1.0, 2.0, 3.0]), cond)


def test_low_precision_model_keeps_io_dtype_and_fp32_time():
    denoiser, cond = tiny_denoiser("unet2d_condition", sdxl=True)
    denoiser.model.to(torch.bfloat16)
    seen = {}
    denoiser.model.register_forward_pre_hook(lambda m, a, kw: seen.update(x=a[0].dtype, t=a[1].dtype,
                                             ehs=kw["encoder_hidden_states"].dtype,
                                             ids=kw["added_cond_kwargs"]["time_ids"].dtype), with_kwargs=True)
    x, t = _inputs(denoiser)
    with torch.no_grad():
        out = denoiser(x.double(), t.double(), cond)
    assert out.dtype == torch.float64
    assert seen == {"x": torch.bfloat16, "t": torch.float32, "ehs": torch.bfloat16, "ids": torch.float32}


@pytest.mark.parametrize("kind,opts", CONDITIONAL, ids=_ids(CONDITIONAL))
def test_cfg_equals_separate_calls(kind, opts):
    denoiser, cond = tiny_denoiser(kind, **opts)
    x, t = _inputs(denoiser)
    w = 3.5
    with torch.no_grad():
        guided = denoiser.guided(x, t, cond, w)
        c = torch.cat([denoiser(x[i : i + 1], t[i : i + 1], _row(cond, i)) for i in range(2)])
        null = denoiser.null_cond(cond)
        u = torch.cat([denoiser(x[i : i + 1], t[i : i + 1], _row(null, i)) for i in range(2)])
    assert not torch.allclose(c, u)  # the null branch really differs
    torch.testing.assert_close(guided, u + w * (c - u), rtol=1e-4, atol=1e-5)


def _row(cond, i):
    return {k: v if k in ("img_ids", "txt_ids") else v[i : i + 1] for k, v in cond.items()}


def test_class_null_label_is_num_classes():
    denoiser, cond = tiny_denoiser("unet2d", num_classes=10)
    assert denoiser.model.config.num_class_embeds == 11
    assert denoiser.null_cond(cond)["class_labels"].tolist() == [10, 10]
    dit, cond = tiny_denoiser("dit", num_classes=7)
    assert dit.null_cond(cond)["class_labels"].tolist() == [7, 7]


def test_guidance_scale_one_is_a_single_call_and_cfg_one_fused_call():
    denoiser, cond = tiny_denoiser("sd3")
    x, t = _inputs(denoiser)
    batches = []
    denoiser.model.register_forward_pre_hook(lambda m, a, kw: batches.append(kw["encoder_hidden_states"].shape[0]),
                                             with_kwargs=True)
    with torch.no_grad():
        denoiser.guided(x, t, cond, 1.0)
        assert batches == [2]
        denoiser.guided(x, t, cond, 4.0)
    assert batches == [2, 4]


def test_per_sample_guidance_scale():
    denoiser, cond = tiny_denoiser("flux")
    x, t = _inputs(denoiser)
    with torch.no_grad():
        per_sample = denoiser.guided(x, t, cond, torch.tensor([1.0, 4.0]))
        cond_only = denoiser(x, t, cond)
        scalar4 = denoiser.guided(x, t, cond, 4.0)
    torch.testing.assert_close(per_sample[0], cond_only[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(per_sample[1], scalar4[1], rtol=1e-4, atol=1e-5)


def test_text_null_cond_must_be_set_explicitly():
    denoiser, cond = tiny_denoiser("sd3")
    fresh = build_denoiser("sd3", denoiser.model)
    with pytest.raises(RuntimeError, match="set_null_cond"):
        fresh.null_cond(cond)
    with pytest.raises(ValueError, match="batch size 1"):
        fresh.set_null_cond({"encoder_hidden_states": cond["encoder_hidden_states"]})
    with pytest.raises(KeyError, match="subset"):
        fresh.set_null_cond({"class_labels": torch.zeros(1)})
    unconditional, _ = tiny_denoiser("unet2d", num_classes=None)
    with pytest.raises(NotImplementedError, match="no unconditional branch"):
        unconditional.null_cond({})


def test_cond_validation_names_the_fix():
    denoiser, cond = tiny_denoiser("flux")
    x, t = _inputs(denoiser)
    with pytest.raises(KeyError, match="guidance"):
        denoiser(x, t, {k: v for k, v in cond.items() if k != "guidance"})
    with pytest.raises(KeyError, match="unknown cond keys"):
        denoiser(x, t, {**cond, "class_labels": torch.zeros(2)})
    schnell, cond_s = tiny_denoiser("flux", guidance_embeds=False)
    with pytest.raises(ValueError, match="no guidance embedding"):
        schnell(x, t, {**cond_s, "guidance": torch.ones(2)})
    uncond, _ = tiny_denoiser("unet2d", num_classes=None)
    with pytest.raises(ValueError, match="no class embedding"):
        uncond(x, t * 0 + 10, {"class_labels": torch.zeros(2, dtype=torch.long)})


TAPS = {  # name -> (channels, h, w) for the tiny configs
    "unet2d": {"down_0": (8, 4, 4), "down_1": (16, 4, 4), "mid": (16, 4, 4)},
    "unet2d_condition": {"down_0": (8, 4, 4), "down_1": (16, 4, 4), "mid": (16, 4, 4)},
    "sd3": {"block_0": (16, 4, 4), "block_1": (16, 4, 4)},
    "flux": {"block_0": (16, 4, 4), "single_0": (16, 4, 4)},
    "sana": {"block_0": (16, 8, 8), "block_1": (16, 8, 8)},
    "dit": {"block_0": (16, 4, 4), "block_1": (16, 4, 4)},
}


@pytest.mark.parametrize("kind", list(TAPS))
def test_feature_taps_shapes(kind):
    denoiser, cond = tiny_denoiser(kind)
    x, t = _inputs(denoiser)
    assert set(denoiser.tap_modules()) == set(TAPS[kind])
    with torch.no_grad(), denoiser.feature_taps() as feats:
        denoiser(x, t, cond)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {k: (2, *s) for k, s in TAPS[kind].items()}


def test_transformer_tap_is_image_tokens_on_the_patch_grid():
    """The DiT tap equals the block's token output reshaped row-major onto the (H/p, W/p) grid."""
    denoiser, cond = tiny_denoiser("dit")
    x, t = _inputs(denoiser)
    raw = {}
    denoiser.model.transformer_blocks[1].register_forward_hook(lambda m, a, out: raw.update(tokens=out))
    with torch.no_grad(), denoiser.feature_taps(["block_1"]) as feats:
        denoiser(x, t, cond)
    tokens = raw["tokens"]  # (B, 16, D), token k = patch (k // 4, k % 4)
    torch.testing.assert_close(feats["block_1"][:, :, 2, 3], tokens[:, 2 * 4 + 3])


def test_gradient_checkpointing_passthrough_keeps_outputs():
    denoiser, cond = tiny_denoiser("unet2d_condition")
    x, t = _inputs(denoiser)
    denoiser.model.train()
    ref = denoiser(x, t, cond)
    denoiser.enable_gradient_checkpointing()
    assert denoiser.model.is_gradient_checkpointing
    out = denoiser(x, t, cond)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref)
    assert denoiser.model.conv_in.weight.grad is not None


def test_registry_errors_list_kinds_and_classes():
    model = tiny_unet2d()
    with pytest.raises(ValueError, match="allowed kinds: unet2d, unet2d_condition, sd3, flux, sana, dit"):
        build_denoiser("sdxl", model)
    with pytest.raises(TypeError, match="UNet2DModel"):
        build_denoiser("dit", model)


def test_flux_packing_matches_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    packed = pack_latents(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 4, 6, 8), rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(packed, 6, 8), x, rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(packed, 6, 8), FluxPipeline._unpack_latents(packed, 48, 64, 8),
                               rtol=0, atol=0)
    torch.testing.assert_close(latent_image_ids(6, 8),
                               FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32))
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 4, 5, 8))


@pytest.mark.parametrize("kind", ["unet2d", "unet2d_condition", "dit", "sd3", "flux"])
def test_forward_mode_jvp_matches_finite_differences(kind):
    """torch.func.jvp through the adapter (needed by sCM/rCM) equals central differences in float64."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    denoiser, cond = tiny_denoiser(kind)
    denoiser.double()
    cond = {k: v.double() if v.is_floating_point() else v for k, v in cond.items()}
    x, t = _inputs(denoiser)
    x, t = x.double(), t.double()
    tx = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # fp32 time embeddings inside diffusers: a time tangent only on the flow path, with a coarse step
    tt = torch.full_like(t, 1.0 if denoiser.path.name == "flow" else 0.0)
    eps = 1e-4 if denoiser.path.name == "flow" else 1e-6
    with sdpa_kernel(SDPBackend.MATH):
        _, tangent = torch.func.jvp(lambda a, b: denoiser(a, b, cond), (x, t), (tx, tt))
    with torch.no_grad():
        fd = (denoiser(x + eps * tx, t + eps * tt, cond) - denoiser(x - eps * tx, t - eps * tt, cond)) / (2 * eps)
    # fp32 time-embedding FD noise
    torch.testing.assert_close(tangent, fd, rtol=1e-3, atol=5e-3 * float(fd.abs().max()))


def test_flux_explicit_position_ids_equal_defaults_and_survive_fused_cfg():
    from diffusers import FluxPipeline

    denoiser, cond = tiny_denoiser("flux")
    x, t = _inputs(denoiser)
    ids = {"img_ids": FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32),
           "txt_ids": torch.zeros(cond["encoder_hidden_states"].shape[1], 3)}
    with torch.no_grad():
        torch.testing.assert_close(denoiser.guided(x, t, {**cond, **ids}, 2.0), denoiser.guided(x, t, cond, 2.0))
