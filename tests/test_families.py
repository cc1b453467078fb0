"""CD end to end through fewstep.distill on a tiny random teacher of every adapter family, full and LoRA."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewstep import distill

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["unet2d", "sd15", "sdxl", "sd3", "flux", "sana", "dit"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cd_recipe_runs_and_trains(family, lora, tmp_path):
    overrides = [f"run.output_dir={tmp_path}", "run.trackers=[]", "run.progress_bar=false", "run.max_steps=2",
                 "run.checkpoint_every=0", "run.num_samples=2"]
    if lora:
        overrides.append("student.lora.rank=2")
    assert distill.main(["--config", str(ROOT / "configs" / f"cd_{family}_tiny.yaml"), *overrides]) == 0
    state = load_file(tmp_path / "checkpoints" / "step-00000002" / "model.safetensors")
    lora_keys = [k for k in state if "lora_" in k]
    assert bool(lora_keys) == lora
    assert all(torch.isfinite(v).all() for v in state.values())
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2


def test_fewstep_attention_backend_runs_training(tmp_path):
    """run.attention_backend=fewstep routes every attention of teacher and student through our kernels."""
    overrides = [f"run.output_dir={tmp_path}", "run.trackers=[]", "run.progress_bar=false", "run.max_steps=1",
                 "run.checkpoint_every=0", "run.num_samples=0", "run.attention_backend=fewstep"]
    assert distill.main(["--config", str(ROOT / "configs" / "cd_sd3_tiny.yaml"), *overrides]) == 0
    from fewstep.build import build_setup
    from fewstep.config import load_config

    setup = build_setup(load_config(ROOT / "configs" / "cd_sd3_tiny.yaml", overrides))
    for network in (setup.teacher.model, setup.student.model):
        processors = {type(p).__name__ for p in network.attn_processors.values()}
        assert processors and all(name.startswith("JVP") for name in processors), processors
