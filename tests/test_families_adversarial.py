"""The adversarial / score-identity objectives and the regularised consistency hybrids end to end through
fewstep.distill on a tiny random teacher of every adapter family, full fine-tuning and LoRA."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewstep import distill

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["unet2d", "sd15", "sdxl", "sd3", "flux", "sana", "dit"]
OBJECTIVES = {  # objective -> (second network, a log key its phases must write)
    "sid": ("fake_score", "sid_loss"), "sid_lsg": ("fake_score", "sid_loss"), "sida": ("fake_score", "gan/d_loss"),
    "vsd": ("fake_score", "vsd_loss"), "add": ("discriminator", "distill_loss"),
    "ladd": ("discriminator", "adv/d_loss"), "rcm": ("fake_score", "dmd_loss"),
    "scm_ladd": ("discriminator", "adv/g_loss")}
BASE = ["run.trackers=[]", "run.progress_bar=false", "run.max_steps=2", "run.checkpoint_every=0", "run.num_samples=2"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_recipe_runs_and_trains(objective, family, lora, tmp_path):
    overrides = ["student.lora.rank=2"] if lora else []
    config = ROOT / "configs" / f"{objective}_{family}_tiny.yaml"
    assert distill.main(["--config", str(config), f"run.output_dir={tmp_path}", *BASE, *overrides]) == 0
    checkpoint = tmp_path / "checkpoints" / "step-00000002"
    student, other = (load_file(checkpoint / f) for f in ("model.safetensors", "model_1.safetensors"))
    assert bool([k for k in student if "lora_" in k]) == lora
    second, key = OBJECTIVES[objective]
    if second == "discriminator":
        assert other and all(k.startswith(("heads.", "cond_embedding.")) for k in other)  # heads only, no backbone
    assert all(torch.isfinite(v).all() for s in (student, other) for v in s.values())
    logged = (tmp_path / "metrics.jsonl").read_text()
    assert key in logged and f"grad_norm/{second}" in logged
    assert len(list((tmp_path / "samples").glob("*step.png"))) == 2
