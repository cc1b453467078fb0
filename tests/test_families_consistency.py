"""sCM and multistep CM end to end through fewstep.distill on a tiny random teacher of every adapter family,
full fine-tuning and LoRA (sCM: torch.func.jvp through each diffusers family on CPU, MATH attention)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewstep import distill

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["unet2d", "sd15", "sdxl", "sd3", "flux", "sana", "dit"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("objective", ["scm", "mcm"])
def test_consistency_recipe_runs_and_trains(objective, family, lora, tmp_path):
    overrides = [f"run.output_dir={tmp_path}", "run.trackers=[]", "run.progress_bar=false", "run.max_steps=2",
                 "run.checkpoint_every=0", "run.num_samples=2"]
    if lora:
        overrides.append("student.lora.rank=2")
    config = ROOT / "configs" / f"{objective}_{family}_tiny.yaml"
    assert distill.main(["--config", str(config), *overrides]) == 0
    state = load_file(tmp_path / "checkpoints" / "step-00000002" / "model.safetensors")
    lora_keys = [k for k in state if "lora_" in k]
    assert bool(lora_keys) == lora
    assert all(torch.isfinite(v).all() for v in state.values())
    if objective == "scm":  # the learned log-variance trains with the student and is checkpointed with it
        assert state["scm_weight.linear.bias"].abs().item() > 0
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2
