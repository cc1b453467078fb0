"""Loading guards: unmatched LoRA keys fail loudly, a LoRA that does nothing is refused, fp16 overflow and
constant images are caught before anything is written, and the scheduler mapping is exact."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fewstep.export import ExportError, LoraLoadError, export_run, load_export, load_lora_strict, open_run
from fewstep.export.families import FAMILIES
from fewstep.models.tiny import tiny_pipeline


def _edited_run(src, dst, edit):
    """A copy of a run whose latest checkpoint's student tensors went through edit(key, tensor)."""
    shutil.copytree(src, dst)
    model = next((dst / "checkpoints").glob("step-*")) / "model.safetensors"
    state = load_file(str(model))
    save_file({k: edit(k, v) for k, v in state.items()}, str(model))
    return dst


def test_unmatched_lora_keys_fail_loudly(exported, tmp_path):
    folder = exported("sd15", "lora")
    state = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    broken = {k.replace("attn1.to_q", "attn1.to_query") if "down_blocks" in k else k: v for k, v in state.items()}
    (tmp_path / "bad").mkdir()
    save_file(broken, str(tmp_path / "bad" / "pytorch_lora_weights.safetensors"))
    # a whole file under another prefix: diffusers only logs "No LoRA keys associated ..." and loads nothing
    foreign = {k.replace("unet.", "transformer.", 1): v for k, v in state.items()}
    (tmp_path / "foreign").mkdir()
    save_file(foreign, str(tmp_path / "foreign" / "pytorch_lora_weights.safetensors"))
    for name, expect in [("bad", "attn1.to_query"), ("foreign", "transformer.")]:
        with pytest.raises(LoraLoadError) as err:
            load_lora_strict(tiny_pipeline("sd15"), FAMILIES["sd15"], tmp_path / name)
        assert "did not load" in str(err.value) and expect in str(err.value), str(err.value)


def test_lora_without_effect_is_refused(trained, tmp_path):
    run = _edited_run(trained("sd15"), tmp_path / "run", lambda k, v: torch.zeros_like(v) if "lora_B" in k else v)
    with pytest.raises(ExportError, match="equals the base model"):
        export_run(run, "lora", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing left behind


@pytest.mark.parametrize("factor,message", [(1e10, "tensors overflow in torch.float16"),  # weights > 65504
                                            (1e6, "non-finite values")],  # weights fit, activations overflow
                         ids=["weights", "activations"])
def test_fp16_overflow_is_refused(trained, tmp_path, factor, message):
    def blow_up(key, value):
        return value * factor if "lora_B" in key and "down_blocks.0" in key else value

    run = _edited_run(trained("sd15"), tmp_path / "run", blow_up)
    with pytest.raises(ExportError, match=message):
        export_run(run, "lora", tmp_path / "out", dtype="fp16")
    assert not (tmp_path / "out").exists()


def test_constant_image_is_refused(trained, tmp_path, monkeypatch):
    import fewstep.export.core as core

    monkeypatch.setattr(core, "decode", lambda pipe, latents: torch.zeros(len(latents), 3, 16, 16))
    with pytest.raises(ExportError, match="constant image"):
        export_run(trained("sd3"), "lora", tmp_path / "out", dtype="bf16")


def test_fp16_export_renders(exported):
    """fp16 LoRA: weights stored in fp16, loaded and sampled in fp16 by the export's own check (finite,
    non-constant image, differs from base)."""
    folder = exported("sdxl", "lora", dtype="fp16")
    tensors = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    assert {v.dtype for v in tensors.values()} == {torch.float16}
    loaded = load_export(folder, base=tiny_pipeline("sdxl"))
    assert loaded.pipe.unet.dtype == torch.float16
    check = loaded.info["verification"]
    assert check["finite"] and check["min_image_std"] > 1e-3 and check["max_abs_diff_vs_base"] > 0


def test_lora_format_needs_a_lora_student_and_loader(trained, tmp_path):
    with pytest.raises(ExportError, match="fully fine-tuned"):
        export_run(trained("unet2d", lora=False), "lora", tmp_path / "a")
    with pytest.raises(ExportError, match="has no load_lora_weights"):
        export_run(trained("dit"), "kohya", tmp_path / "b")


def test_lcm_boundary_with_other_sigma_data_is_folded(trained):
    """LCMScheduler hard-codes sigma_data = 0.5: another sigma_data is folded into timestep_scaling."""
    from fewstep.export.schedulers import default_export_scheduler

    objective = open_run(trained("sd15")).setup.objective
    objective.boundary.sigma_data = 0.3
    spec = default_export_scheduler(objective, (1, 2))
    scheduler = spec.build()
    for t in (0, 1, 101, 901):
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        ours = objective.boundary.scalings(torch.tensor(float(t), dtype=torch.float64))
        assert abs(c_skip - float(ours[0])) < 1e-9 and abs(c_out - float(ours[1])) < 1e-9
    scheduler.set_timesteps(**spec.set_timesteps_kwargs(2))
    assert scheduler.timesteps.tolist() == [int(t) for t in objective.sampling_grid(2).tolist()]
