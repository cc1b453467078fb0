"""benchmarks/checkpoint_curve.py: one row per kept checkpoint, and each cell is the bundled-task FD of that
checkpoint's student, recomputed here from the same noise and sampler seeds."""

import importlib
import json
import sys
from pathlib import Path

import torch

from fewstep import distill
from fewstep.evaluation.animal_mnist import fd_to_test, generate
from fewstep.runs import load_run

ROOT = Path(__file__).resolve().parents[2]


def test_curve_rows_are_each_checkpoints_fd(tmp_path, monkeypatch):
    run = tmp_path / "cd_tiny_animal_mnist"
    assert distill.main(["--config", str(ROOT / "configs" / "cd_animal_mnist.yaml"), f"run.output_dir={run}",
                         "run.trackers=[]", "run.progress_bar=false", "run.max_steps=2", "run.checkpoint_every=1",
                         "run.num_samples=0", "data.batch_size=4"]) == 0
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    curve = importlib.import_module("checkpoint_curve")
    monkeypatch.setattr(sys.modules["common"], "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["checkpoint_curve.py", str(run), "--steps", "1", "--num-eval", "20"])
    curve.main()
    rows = json.loads((tmp_path / "results" / "checkpoint_curve.json").read_text())["runs"]["cd_tiny"]
    assert sorted(rows) == ["step-00000001", "step-00000002"]

    setup = load_run(run, "step-00000001")
    setup.student.eval()
    sampler_generator = torch.Generator().manual_seed(7)
    expected = fd_to_test(generate(lambda z, c: setup.objective.sample(z, 1, c, sampler_generator), 20))
    assert abs(rows["step-00000001"]["1step"] - expected) < 1e-6 * expected
    assert rows["step-00000001"]["1step"] != rows["step-00000002"]["1step"]  # a trained step changes the student
