"""Two real processes on CPU (accelerate --multi_gpu, gloo): synchronised gradients, per-rank
randomness, and checkpoint/resume in that mode."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ._common import cosine_with_warmup

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("ddp_probe.py")

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None
                                and not (Path(sys.executable).parent / "accelerate").exists(),
                                reason="accelerate launcher not installed")


def launch(out: Path, steps: int, resume: str | None = None, recipe: str | None = None, *overrides: str,
           extra_env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    accelerate = str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 1000),
           str(PROBE), str(out), str(steps), resume or "-"] + ([recipe, *overrides] if recipe else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true", **(extra_env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0 or not check, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_two_processes_sync_gradients_and_resume(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    launch(straight, 4)
    r0, r1 = load_file(straight / "rank0.safetensors"), load_file(straight / "rank1.safetensors")
    assert int(r0["world_size"]) == 2 == int(r1["world_size"])
    weights = [k for k in r0 if k.startswith("student.")]
    assert weights
    for k in weights:  # DDP averaged the gradients: both replicas hold the same weights
        assert (r0[k] == r1[k]).all(), k
    assert not (r0["draws"] == r1["draws"]).all()  # each rank draws its own noise and times
    assert not (r0["first_batch"] == r1["first_batch"]).all()
    head = "student.head.weight"
    assert r0[head].abs().sum() > 0  # it trained (the head starts at zero)

    launch(split, 2)
    launch(split, 4, "latest")
    s0 = load_file(split / "rank0.safetensors")
    for k in weights:
        assert (s0[k] == r0[k]).all(), f"{k} differs after a 2-process resume"
    assert sorted(p.name for p in (split / "checkpoints" / "step-00000004").glob("random_states_*")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]


@pytest.mark.parametrize("recipe", ["ladd_sd15_tiny.yaml", "sida_dit_tiny.yaml"])
def test_two_processes_sync_discriminator_and_fake_score(recipe, tmp_path):
    """Every trained network of a GAN / score-identity objective (student, discriminator heads, fake score with
    its GAN head) stays identical across the two replicas: each phase's forward runs through its DDP wrapper."""
    launch(tmp_path, 2, recipe=recipe)
    r0, r1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    networks = {k.split(".")[0] for k in r0 if k not in ("draws", "first_batch", "world_size")}
    assert networks == {"student", "discriminator" if recipe.startswith("ladd") else "fake_score"}
    for k in r0:
        if k.split(".")[0] in networks:
            assert (r0[k] == r1[k]).all(), k
    assert not (r0["first_batch"] == r1["first_batch"]).all()


def test_two_processes_keep_each_learning_rate_schedule_on_the_training_step(tmp_path):
    """Under two processes a cosine schedule still spans max_steps, for the student (1 update per step) and for
    DMD2's fake score (5 per step): accelerate's default would advance it num_processes times per update."""
    steps, warmup = 6, 2
    schedule = [f"optimizers.{n}.{k}" for n in ("student", "fake_score")
                for k in ("lr_scheduler=cosine", f"warmup_steps={warmup}")]
    launch(tmp_path, steps, None, "dmd2_toy.yaml", *schedule)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for row in rows:
        factor = cosine_with_warmup(row["step"], warmup, steps)
        assert row["lr/student"] == pytest.approx(1e-3 * factor, abs=1e-12), row
        assert row["lr/fake_score"] == pytest.approx(2e-3 * factor, abs=1e-12), row


def test_accelerate_launch_module_entry(tmp_path):
    """The documented entry: `accelerate launch -m fewstep.distill --config ...`."""
    accelerate = str(Path(sys.executable).parent / "accelerate")
    cmd = [accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "fewstep.distill", "--config", str(ROOT / "configs" / "cd_toy.yaml"),
           f"run.output_dir={tmp_path}", "run.max_steps=3", "run.trackers=[]", "run.progress_bar=false",
           "run.num_samples=0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "step-00000003" / "model.safetensors").is_file()


def test_a_nan_on_one_rank_stops_every_rank_and_keeps_the_last_good_checkpoint(tmp_path):
    """Rank 1 alone diverges at step 3: the launch fails fast (the launcher stops the replica left waiting in an
    all-reduce), the error names the step and the last good checkpoint, and that checkpoint (step 2) is intact."""
    start = time.perf_counter()
    proc = launch(tmp_path, 5, None, "cd_toy.yaml", "run.checkpoint_every=2", extra_env={"PROBE_NAN_RANK": "1"},
                  check=False)
    assert proc.returncode != 0 and time.perf_counter() - start < 300
    assert "NonFiniteError: non-finite values at step 3" in proc.stderr, proc.stderr[-3000:]
    assert "last good checkpoint: " in proc.stderr and "step-00000002" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-00000002"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert load_file(tmp_path / "checkpoints" / "step-00000002" / "model.safetensors")
