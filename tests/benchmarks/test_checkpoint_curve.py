"""benchmarks/checkpoint_curve.py: one row per kept checkpoint, and each cell is the bundled-task FD of that
checkpoint's student, recomputed here from the same noise and sampler seeds."""

import json

import torch

from fewstep.evaluation.animal_mnist import fd_to_test, generate
from fewstep.runs import load_run


def test_curve_rows_are_each_checkpoints_fd(tiny_run, run_benchmark, results_dir):
    run = tiny_run("cd_animal_mnist", "cd_tiny_animal_mnist", 2, checkpoint_every=1)
    run_benchmark("checkpoint_curve", str(run), "--steps", "1", "--num-eval", "20")
    rows = json.loads((results_dir / "checkpoint_curve.json").read_text())["runs"]["cd_tiny"]
    assert sorted(rows) == ["step-00000001", "step-00000002"]

    setup = load_run(run, "step-00000001")
    setup.student.eval()
    sampler_generator = torch.Generator().manual_seed(7)
    expected = fd_to_test(generate(lambda z, c: setup.objective.sample(z, 1, c, sampler_generator), 20))
    assert abs(rows["step-00000001"]["1step"] - expected) < 1e-6 * expected
    assert rows["step-00000001"]["1step"] != rows["step-00000002"]["1step"]  # a trained step changes the student
