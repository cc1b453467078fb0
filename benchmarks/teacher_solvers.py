"""Which teacher grid a discrete-time consistency recipe should bootstrap along: FD of the bundled teacher's samples
(CFG 1.5, 1000 class-balanced samples, noise seed 2024, as benchmarks/bundled_task.py scores) by Euler or Heun on
diffusers' flow grid (what CD trained on until `objective.grid`) or on an even time grid, at a few step counts.

    python benchmarks/teacher_solvers.py
    python benchmarks/teacher_solvers.py --rows heun:uniform:8,euler:diffusers:16 --num 1000
    python benchmarks/teacher_solvers.py --teacher runs/teacher_dense_time --name teacher_solvers_dense_time \
        --rows euler:uniform:32,euler:uniform:8,euler:uniform:4   # another teacher folder (scripts/retime_teacher.py)

Writes benchmarks/results/<name>.json (default teacher_solvers): one row per solver x grid x steps, with the teacher's
forward passes per sample (Heun: 2 per step but 1 on the step to sigma 0) and the sampling seconds on this machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

DEFAULT_ROWS = "euler:diffusers:16,heun:diffusers:8,heun:uniform:8,heun:uniform:4"


def parse_rows(text: str) -> list[tuple[str, str, int]]:
    rows = []
    for item in text.split(","):
        solver, grid, steps = item.split(":")
        rows.append((solver, grid, int(steps)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="solver:grid:steps, comma separated")
    parser.add_argument("--num", type=int, default=1000, help="samples per row (the bundled task's 1000)")
    parser.add_argument("--guidance", type=float, default=1.5, help="CFG scale (the bundled recipes' 1.5)")
    parser.add_argument("--teacher", default=None, help="a diffusers DiT folder (default: the bundled teacher)")
    parser.add_argument("--name", default="teacher_solvers", help="the results file's name")
    args = parser.parse_args()

    from fewstep.data.animal_mnist import TEACHER_DIR
    from fewstep.evaluation.animal_mnist import fd_to_test, generate
    from fewstep.models import load_denoiser
    from fewstep.sampling import sample_ode

    teacher = load_denoiser("dit", args.teacher or TEACHER_DIR).eval()
    results = []
    for solver, grid, steps in parse_rows(args.rows):
        start = time.perf_counter()
        images = generate(lambda z, c: sample_ode(teacher, z, steps, c, args.guidance, solver=solver, grid=grid),
                          args.num)
        seconds = time.perf_counter() - start
        forwards = steps if solver != "heun" else 2 * steps - 1
        results.append({"solver": solver, "grid": grid, "steps": steps, "teacher_forwards": forwards,
                        "fd": fd_to_test(images), "seconds": seconds})
        print(results[-1], flush=True)
    write_result(args.name, {"teacher": str(args.teacher or TEACHER_DIR), "num_samples": args.num,
                             "guidance_scale": args.guidance, "seed": 2024,
                             "metric": "FD, bundled classifier features, vs test split", "rows": results})


if __name__ == "__main__":
    main()
