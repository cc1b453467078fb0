"""The tiny factories: seeded and side-effect free, real tokenizers that save/load, and real diffusers
pipelines that run end to end on the tiny components."""

from __future__ import annotations

import pytest
import torch

from fewstep.models.tiny import (PIPELINE_FAMILIES, T5_MAX_LENGTH, tiny_clip_tokenizer, tiny_denoiser, tiny_dit,
                                 tiny_pipeline, tiny_t5_tokenizer)


def test_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = tiny_dit(seed=1), tiny_dit(seed=1), tiny_dit(seed=2)
    torch.testing.assert_close(torch.rand(3), expected)
    wa, wb, wc = (m.proj_out_2.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tokenizers_are_real_and_round_trip(tmp_path):
    from transformers import CLIPTokenizer, T5Tokenizer

    clip = tiny_clip_tokenizer()
    ids = clip("The  cat").input_ids  # lower-cased, whitespace-collapsed, merged to "the</w>", "cat</w>"
    assert clip.convert_ids_to_tokens(ids) == ["<|startoftext|>", "the</w>", "cat</w>", "<|endoftext|>"]
    assert clip.decode(clip("a dog!").input_ids, skip_special_tokens=True).strip() == "a dog !"  # as real CLIP
    clip.save_pretrained(tmp_path / "clip")
    assert CLIPTokenizer.from_pretrained(tmp_path / "clip")("The  cat").input_ids == ids
    t5 = tiny_t5_tokenizer()
    ids = t5("a dog").input_ids
    assert ids[-1] == t5.eos_token_id and t5.unk_token_id not in ids
    t5.save_pretrained(tmp_path / "t5")
    assert T5Tokenizer.from_pretrained(tmp_path / "t5")("a dog").input_ids == ids
    assert t5.model_max_length == T5_MAX_LENGTH


@pytest.mark.parametrize("family", PIPELINE_FAMILIES)
def test_tiny_pipeline_runs(family):
    pipe = tiny_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    kw: dict = dict(num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="pt")
    if family == "ddpm":
        images = pipe(batch_size=1, **kw).images
    elif family == "dit":
        images = pipe(class_labels=[3], **kw).images
    else:
        size = 32 if family == "sana" else 16  # SanaPipeline requires multiples of 32
        extra = {"use_resolution_binning": False} if family == "sana" else {}
        if family in ("sd3", "flux", "sana"):
            extra["max_sequence_length"] = T5_MAX_LENGTH
        images = pipe(prompt="the cat", height=size, width=size, **extra, **kw).images
    images = torch.as_tensor(images)
    assert images.shape[0] == 1 and torch.isfinite(images).all()


def test_tiny_denoiser_unknown_kind():
    with pytest.raises(ValueError, match="allowed kinds"):
        tiny_denoiser("wan")
