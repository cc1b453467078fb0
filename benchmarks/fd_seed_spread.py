"""How much of a bundled-task FD cell is the evaluation's own noise: FD of the teacher and of saved students over
several noise seeds, each seed shared by every model (paired), 1000 samples as in benchmarks/bundled_task.py
(which uses the first seed, 2024, only).

    python benchmarks/fd_seed_spread.py runs/sid_batch64_animal_mnist runs/sida2_longest_animal_mnist
    python benchmarks/fd_seed_spread.py RUN --seeds 2024,7,8,9 --teacher-steps 32 --student-steps 1
    python benchmarks/fd_seed_spread.py RUN [RUN ...] --name fd_seed_spread_near_bar   # another results file

Per model: FD per seed, mean and sample std; per student: its FD minus the teacher's on the same seed (mean, std,
and on how many seeds the student is at or below the teacher) and its FD over the teacher's on the same seed (mean,
std; the bundled task's quality bar is 1.5). Writes benchmarks/results/<name>.json and a table, <name>.md (name:
fd_seed_spread unless --name).
The teacher's 32 Euler steps with CFG take most of the time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, run_label, write_result  # noqa: E402


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="student run directories (config.yaml + checkpoints/)")
    parser.add_argument("--seeds", default="2024,7,8,9", help="noise seeds; 2024 is bundled_task.py's")
    parser.add_argument("--num-eval", type=int, default=1000)
    parser.add_argument("--teacher-steps", type=int, default=32)
    parser.add_argument("--student-steps", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=1.5, help="the teacher's CFG (the bundled recipes' 1.5)")
    parser.add_argument("--name", default="fd_seed_spread", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2:
        parser.error("--seeds: give at least two seeds, or there is no spread to measure")

    from fewstep.evaluation.animal_mnist import fd_to_test, student_samples, teacher_samples
    from fewstep.runs import load_run

    students = {run_label(run): load_run(run) for run in args.runs}
    first, guidance = next(iter(students.values())), args.guidance
    teacher_key = f"teacher_{args.teacher_steps}step"
    fd: dict[str, list[float]] = {teacher_key: [], **{f"{name}_{args.student_steps}step": [] for name in students}}
    for seed in seeds:
        fd[teacher_key].append(fd_to_test(teacher_samples(first.teacher, args.teacher_steps, guidance,
                                                          args.num_eval, seed=seed)))
        for name, setup in students.items():
            x = student_samples(setup.objective, args.student_steps, args.num_eval, seed=seed)
            fd[f"{name}_{args.student_steps}step"].append(fd_to_test(x))
        print(seed, {k: round(v[-1], 4) for k, v in fd.items()}, flush=True)
    models = {key: {"per_seed": values, **spread(values)} for key, values in fd.items()}
    for key, values in fd.items():
        if key != teacher_key:
            gaps = [s - t for s, t in zip(values, fd[teacher_key])]
            models[key]["minus_teacher"] = {**spread(gaps), "seeds_at_or_below": sum(g <= 0 for g in gaps)}
            models[key]["over_teacher"] = spread([s / t for s, t in zip(values, fd[teacher_key])])
    path = write_result(args.name, {
        "metric": "FD, bundled classifier features, vs test split", "num_eval": args.num_eval, "seeds": seeds,
        "teacher_sampler": f"Euler on an even time grid, CFG {guidance}", "student_weights": "final (not the EMA)",
        "runs": {run_label(run): str(run) for run in args.runs}, "models": models})
    write_table(json.loads(path.read_text()), args.name)


def write_table(payload: dict, name: str) -> None:
    seeds = payload["seeds"]
    lines = ["| model (steps) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | minus teacher | "
             "seeds <= teacher | over teacher |", "|---|" + "---|" * (len(seeds) + 4)]
    for key, m in payload["models"].items():
        gap, ratio = m.get("minus_teacher"), m.get("over_teacher")  # the teacher has neither; older results no ratio
        cells = [*(f"{v:.3f}" for v in m["per_seed"]), f"{m['mean']:.3f} ± {m['std']:.3f}",
                 f"{gap['mean']:+.3f} ± {gap['std']:.3f}" if gap else " ",
                 f"{gap['seeds_at_or_below']}/{len(seeds)}" if gap else "",
                 f"{ratio['mean']:.3f} ± {ratio['std']:.3f}" if ratio else ""]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + f"\n\n{payload['num_eval']} samples per cell.\n")


if __name__ == "__main__":
    main()
