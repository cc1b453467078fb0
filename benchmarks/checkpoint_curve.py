"""FD of every kept checkpoint of bundled-task runs: how a student's quality moved during its training.

    python benchmarks/checkpoint_curve.py runs/scm_fd_long_animal_mnist runs/scm_fd_longer_animal_mnist --steps 1
    python benchmarks/checkpoint_curve.py runs/add_long_animal_mnist --steps 1 --ema --name checkpoint_curve_ema

Each cell is benchmarks/bundled_task.py's measurement (1000 class-balanced samples from noise seed 2024, sampler
generator seed 7, FD in the bundled classifier's features vs the test split), so a run's last checkpoint reproduces
its row there. --ema adds the same cells for the EMA of the student's weights the checkpoint holds
(run.ema_decay), as "<steps>step_ema": the benchmark scores the final training weights, many papers their EMA.
Writes benchmarks/results/checkpoint_curve.json (or --name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_label, write_result  # noqa: E402


def checkpoint_fds(run: str, student_steps: list[int], num_eval: int,
                   ema: bool = False) -> dict[str, dict[str, float]]:
    from fewstep.evaluation.animal_mnist import fd_to_test, student_samples
    from fewstep.runs import load_run
    from fewstep.training.checkpoint import checkpoint_root

    curve = {}
    for path in sorted(p for p in checkpoint_root(run).glob("step-*") if p.is_dir()):
        if ema and not (path / "ema_student.safetensors").is_file():
            raise SystemExit(f"{path} holds no EMA of the student (its run had no run.ema_decay): drop --ema")
        row = {}
        for suffix, use_ema in [("", False), ("_ema", True)][:2 if ema else 1]:
            setup = load_run(run, str(path), ema=use_ema)
            row.update({f"{steps}step{suffix}": fd_to_test(student_samples(setup.objective, steps, num_eval))
                        for steps in student_steps})
        curve[path.name] = row
        print(run_label(run), path.name, row, flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="bundled-task run directories")
    parser.add_argument("--steps", default="1,2,4", help="student step counts")
    parser.add_argument("--num-eval", type=int, default=1000)
    parser.add_argument("--ema", action="store_true", help="also score each checkpoint's EMA weights")
    parser.add_argument("--name", default="checkpoint_curve")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps = [int(v) for v in args.steps.split(",")]
    curves = {run_label(run): checkpoint_fds(run, steps, args.num_eval, args.ema) for run in args.runs}
    from fewstep.evaluation.animal_mnist import SAMPLER_SEED

    write_result(args.name, {"num_eval": args.num_eval, "noise_seed": 2024, "sampler_seed": SAMPLER_SEED,
                             "runs": curves})


if __name__ == "__main__":
    main()
