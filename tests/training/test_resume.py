"""Checkpoint/resume: N steps straight == N/2, process exit, resume N/2 (same losses and weights)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
BASE = ["--config", str(ROOT / "configs" / "cd_toy.yaml"), "run.trackers=[]", "run.progress_bar=false",
        "data.batch_size=64", "run.num_samples=0", "run.checkpoint_every=0", "run.ema_decay=0.9"]


def distill(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "fewstep.distill", *BASE, f"run.output_dir={out}", *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def test_resume_is_bit_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    distill(straight, "run.max_steps=8")
    distill(split, "run.max_steps=4")
    assert latest(split).name == "step-00000004"
    proc = distill(split, "run.max_steps=8", "--resume", "latest")
    assert "resumed from" in proc.stdout + proc.stderr
    a, b = losses(straight), losses(split)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert all(r["time/step_seconds"] > 0 for r in a + b)
    untimed = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]  # noqa: E731
    assert untimed(a) == untimed(b)  # every logged value of every step but wall-clock time, exactly
    for name in ("model.safetensors", "objective_state.safetensors", "ema_student.safetensors", "optimizer.bin"):
        pa, pb = latest(straight) / name, latest(split) / name
        if name.endswith(".safetensors"):
            ta, tb = load_file(pa), load_file(pb)
            assert ta.keys() == tb.keys()
            for k in ta:
                assert (ta[k] == tb[k]).all(), f"{name}:{k} differs after resume"
        else:
            assert pa.read_bytes() == pb.read_bytes()


def test_resume_latest_without_checkpoint_is_a_clear_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "fewstep.distill", *BASE, f"run.output_dir={tmp_path}",
                           "run.max_steps=2", "--resume", "latest"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2
    assert "no checkpoint in" in proc.stderr and "start without --resume" in proc.stderr
