"""scripts/retime_teacher.py: the copy is fitted to the bundled teacher's velocity with its timestep fed at
num_train_timesteps * t, and the folder it writes loads as a fewstep denoiser that feeds exactly that timestep."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel

from fewstep.data.animal_mnist import TEACHER_DIR
from fewstep.diffusion.paths import FlowPath
from fewstep.models import load_denoiser

ROOT = Path(__file__).resolve().parents[2]


def test_fit_loss_is_zero_for_the_teacher_itself_and_sees_the_new_time_feed():
    velocity_fit_loss = runpy.run_path(str(ROOT / "scripts" / "retime_teacher.py"))["velocity_fit_loss"]
    teacher = DiTTransformer2DModel.from_pretrained(TEACHER_DIR, subfolder="transformer").eval()
    x0, labels = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 3, 9, 10])  # 10: the null label
    with torch.no_grad():
        same = velocity_fit_loss(teacher, FlowPath(1000), teacher, FlowPath(1000), x0, labels,
                                 torch.Generator().manual_seed(0))
        dense = velocity_fit_loss(teacher, FlowPath(1), teacher, FlowPath(1000), x0, labels,
                                  torch.Generator().manual_seed(0))
    assert same.item() == 0.0 and dense.item() > 1e-3


def test_a_short_run_writes_a_folder_that_loads_with_the_dense_time_feed(tmp_path):
    out = tmp_path / "dense"
    cmd = [sys.executable, "scripts/retime_teacher.py", "--out", str(out), "--steps", "2", "--batch-size", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "retime.json").read_text())
    assert record["args"]["num_train_timesteps"] == 1 and len(record["velocity_mse"]) == 1
    assert record["command"] == f"python scripts/retime_teacher.py --out {out} --steps 2 --batch-size 4"
    denoiser = load_denoiser("dit", str(out)).eval()
    assert denoiser.path.num_train_timesteps == 1
    x_t, t = torch.randn(2, 1, 28, 28), torch.tensor([0.3, 0.9])
    cond = {"class_labels": torch.tensor([1, 2])}
    with torch.no_grad():
        direct = denoiser.model(x_t, t, cond["class_labels"]).sample  # the network fed timestep t itself
        torch.testing.assert_close(denoiser(x_t, t, cond), direct)
