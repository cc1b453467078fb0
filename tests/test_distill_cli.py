"""The spine end to end: `python -m fewstep.distill` on a tiny random diffusers UNet2DModel, full and LoRA."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from fewstep.models import tiny_denoiser

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "cd_unet2d_tiny.yaml")
COMMON = ["run.progress_bar=false"]


def trained_weights(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(run / "checkpoints" / latest / "model.safetensors")


def run_cli(out: Path, *overrides: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "fewstep.distill", "--config", RECIPE, f"run.output_dir={out}",
                           *COMMON, *overrides], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_cli_full_finetune_on_tiny_unet(tmp_path):
    run_cli(tmp_path)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "metrics.jsonl").is_file()
    assert (sorted(p.name for p in (tmp_path / "samples").iterdir())
            == ["step00000004_1step.png", "step00000004_2step.png"])
    assert (tmp_path / "loss_curves.png").is_file()
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))  # TensorBoard through accelerate's tracker
    teacher, _ = tiny_denoiser("unet2d")
    reference = {f"model.{k}": v for k, v in teacher.model.state_dict().items()}
    student = trained_weights(tmp_path)
    changed = [k for k in reference if not torch.equal(reference[k], student[k])]
    assert len(changed) > len(reference) // 2  # full fine-tuning moved most tensors


def test_lora_student_trains_only_adapters(tmp_path):
    # the usual memory-lean combination: LoRA + bf16 autocast + gradient checkpointing
    # (a subprocess: accelerate fixes the precision of a process at its first Accelerator)
    run_cli(tmp_path, "student.lora.rank=4", "run.mixed_precision=bf16", "run.gradient_checkpointing=true")
    teacher, _ = tiny_denoiser("unet2d")
    reference = {f"model.{k}": v for k, v in teacher.model.state_dict().items()}
    student = trained_weights(tmp_path)
    lora = [k for k in student if "lora_" in k]
    assert lora, "no LoRA weights in the checkpoint"
    for key, value in reference.items():  # every base weight is untouched
        base_key = (key if key in student
                    else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias"))
        assert torch.equal(student[base_key], value), key
    lora_b = [k for k in lora if "lora_B" in k]
    assert any(student[k].abs().sum() > 0 for k in lora_b)  # B starts at zero; training moved it
