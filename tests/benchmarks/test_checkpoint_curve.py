"""benchmarks/checkpoint_curve.py: one row per kept checkpoint, and each cell is the bundled-task FD of that
checkpoint's student, recomputed here from the same noise and sampler seeds."""

import json

import pytest
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


def test_ema_cells_score_the_checkpoints_ema_weights(tiny_run, run_benchmark, results_dir):
    run = tiny_run("cd_animal_mnist", "cd_tiny_animal_mnist", 2)
    run_benchmark("checkpoint_curve", str(run), "--steps", "1", "--num-eval", "20", "--ema")
    row = json.loads((results_dir / "checkpoint_curve.json").read_text())["runs"]["cd_tiny"]["step-00000002"]
    assert sorted(row) == ["1step", "1step_ema"]

    def fd(ema: bool) -> float:
        setup = load_run(run, "step-00000002", ema=ema)
        sampler_generator = torch.Generator().manual_seed(7)
        return fd_to_test(generate(lambda z, c: setup.objective.sample(z, 1, c, sampler_generator), 20))

    assert abs(row["1step_ema"] - fd(True)) < 1e-6 * row["1step_ema"]
    assert abs(row["1step"] - fd(False)) < 1e-6 * row["1step"]
    assert row["1step_ema"] != row["1step"]  # two updates move the weights away from their average


def test_ema_without_an_ema_in_the_run_is_refused(tiny_run, run_benchmark):
    run = tiny_run("cd_animal_mnist", "cd_tiny_animal_mnist", 1, "run.ema_decay=null")
    with pytest.raises(SystemExit, match="holds no EMA of the student.*drop --ema"):
        run_benchmark("checkpoint_curve", str(run), "--steps", "1", "--num-eval", "20", "--ema")
