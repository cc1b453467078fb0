"""DMD2 end to end through fewstep.distill on a tiny random teacher of every adapter family, full and LoRA
(2-step generator, backward simulation, two-time-scale fake-score updates, GAN head on the fake score);
plus the LoRA fake score and the phased / decoupled variants on one family."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewstep import distill

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["unet2d", "sd15", "sdxl", "sd3", "flux", "sana", "dit"]
BASE = ["run.trackers=[]", "run.progress_bar=false", "run.max_steps=2", "run.checkpoint_every=0", "run.num_samples=2"]


def run(config: str, tmp_path: Path, *overrides: str) -> dict:
    assert distill.main(["--config", str(ROOT / "configs" / config), f"run.output_dir={tmp_path}", *BASE,
                         *overrides]) == 0
    checkpoint = tmp_path / "checkpoints" / "step-00000002"
    return {f.name: load_file(f) for f in checkpoint.glob("model*.safetensors")}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_dmd2_recipe_runs_and_trains(family, lora, tmp_path):
    states = run(f"dmd2_{family}_tiny.yaml", tmp_path, *(["student.lora.rank=2"] if lora else []))
    student, fake_score = states["model.safetensors"], states["model_1.safetensors"]
    assert bool([k for k in student if "lora_" in k]) == lora
    assert any(k.startswith("head.") for k in fake_score)  # the GAN head trained with the fake score
    assert all(torch.isfinite(v).all() for s in states.values() for v in s.values())
    assert len(list((tmp_path / "samples").glob("*step.png"))) == 2
    diagnostics = sorted(p.name.split("_diag_")[1] for p in (tmp_path / "samples").glob("*_diag_*.png"))
    assert diagnostics == ["fake_score_x0.png", "generator.png", "noisy.png", "real_score_x0.png"]
    logged = (tmp_path / "metrics.jsonl").read_text()
    for key in ("fake_score_loss", "dmd_loss", "gan/d/logit_real", "gan/g/logit_fake", "diversity",
                "grad_norm/fake_score"):
        assert key in logged


def test_lora_fake_score_keeps_no_second_copy(tmp_path):
    states = run("dmd2_sd15_tiny.yaml", tmp_path, "objective.fake_score.mode=lora", "objective.fake_score.lora_rank=2")
    fake_score = states["model_1.safetensors"]
    assert fake_score and all(k.startswith(("adapter_parameters.", "head.")) for k in fake_score)
    assert (sum(v.numel() for v in fake_score.values())
            < 0.2 * sum(v.numel() for v in states["model.safetensors"].values()))


@pytest.mark.parametrize("config", ["dmd_phased_unet2d_tiny.yaml", "dmd_decoupled_unet2d_tiny.yaml"])
def test_variant_recipes_run(config, tmp_path):
    states = run(config, tmp_path)
    assert all(torch.isfinite(v).all() for s in states.values() for v in s.values())
