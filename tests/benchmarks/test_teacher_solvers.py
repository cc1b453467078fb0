"""benchmarks/teacher_solvers.py: one row per solver x grid x steps, scored by the bundled task's FD."""

import json

from fewstep.data.animal_mnist import TEACHER_DIR
from fewstep.evaluation.animal_mnist import fd_to_test, generate
from fewstep.models import load_denoiser
from fewstep.sampling import sample_ode


def test_rows_are_the_bundled_fd_of_each_sampler(run_benchmark, results_dir):
    run_benchmark("teacher_solvers", "--rows", "heun:uniform:2,euler:diffusers:2", "--num", "20")
    rows = json.loads((results_dir / "teacher_solvers.json").read_text())["rows"]
    assert [(r["solver"], r["grid"], r["steps"], r["teacher_forwards"]) for r in rows] == \
        [("heun", "uniform", 2, 3), ("euler", "diffusers", 2, 2)]
    teacher = load_denoiser("dit", TEACHER_DIR).eval()
    again = fd_to_test(generate(lambda z, c: sample_ode(teacher, z, 2, c, 1.5, solver="heun", grid="uniform"), 20))
    assert rows[0]["fd"] == again
    assert rows[0]["fd"] != rows[1]["fd"]
