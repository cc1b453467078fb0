"""benchmarks/fd_seed_spread.py end to end on a 2-step SiD run of the bundled task: one FD per seed and model, the
same seed giving the same FD as bundled_task.py's generate-then-fd_to_test, mean/std as numpy's, paired gaps and
ratios, written under --name."""

import json

import numpy as np
import torch

from fewstep.evaluation.animal_mnist import fd_to_test, generate, teacher_samples
from fewstep.runs import load_run


def test_seed_spread_is_paired_and_matches_a_direct_evaluation(tiny_run, run_benchmark, results_dir):
    run = tiny_run("sid_animal_mnist", "sid_tiny", 2)
    run_benchmark("fd_seed_spread", str(run), "--seeds", "3,4,5", "--num-eval", "60", "--teacher-steps", "2",
                  "--name", "spread_probe")
    out = json.loads((results_dir / "spread_probe.json").read_text())
    teacher, student = out["models"]["teacher_2step"], out["models"]["sid_tiny_1step"]
    setup = load_run(run)
    direct = fd_to_test(generate(lambda z, c: setup.objective.sample(z, 1, c, torch.Generator().manual_seed(7)),
                                 60, seed=4))
    assert abs(student["per_seed"][1] - direct) < 1e-9
    assert abs(teacher["per_seed"][0] - fd_to_test(teacher_samples(setup.teacher, 2, 1.5, 60, seed=3))) < 1e-9
    assert len(set(student["per_seed"])) == 3  # each seed draws other noise
    assert np.isclose(student["std"], np.std(student["per_seed"], ddof=1))
    gaps = np.subtract(student["per_seed"], teacher["per_seed"])
    assert np.isclose(student["minus_teacher"]["mean"], gaps.mean())
    assert student["minus_teacher"]["seeds_at_or_below"] == int((gaps <= 0).sum())
    ratios = np.divide(student["per_seed"], teacher["per_seed"])
    assert np.isclose(student["over_teacher"]["mean"], ratios.mean())
    assert np.isclose(student["over_teacher"]["std"], ratios.std(ddof=1))
    table = (results_dir / "spread_probe.md").read_text()
    assert "| sid_tiny_1step | " in table and f"{student['mean']:.3f} ± {student['std']:.3f}" in table
    assert table.splitlines()[-3].endswith(f"| {ratios.mean():.3f} ± {ratios.std(ddof=1):.3f} |")
    assert not (results_dir / "fd_seed_spread.json").exists()
