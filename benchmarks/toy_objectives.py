"""Every objective's shipped toy recipe on the exact Gaussian-mixture task (2-D ring, flow path): sliced
Wasserstein distance to the data (1500 samples, fixed seeds) at 1, 2 and 4 steps, next to the teacher's Euler
sampler at the same step counts. Each recipe is trained at several run seeds: the table shows the median and the
worst seed, so a recipe that diverges at some seeds shows it. CPU, one thread, about 17 minutes for 8 seeds.

    python benchmarks/toy_objectives.py                       # writes benchmarks/results/toy_objectives.{json,md}
    python benchmarks/toy_objectives.py --recipes sid --set optimizers.student.lr=3e-4   # a setting across seeds
    python benchmarks/toy_objectives.py --recipes add ladd --merge   # re-measure some recipes, keep the other rows
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from common import RESULTS, write_result
from fewstep.build import build_setup
from fewstep.config import load_config
from fewstep.sampling import sample_ode
from fewstep.toy import sliced_wasserstein
from fewstep.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["cd", "mcm", "scm", "rcm", "scm_ladd", "dmd", "dmd2", "dmd_phased", "dmd_decoupled", "sid", "sida", "vsd",
           "add", "ladd"]
STEPS = (1, 2, 4)


def evaluate(recipe: str, seed: int, overrides: Sequence[str] = ()) -> dict[str, object]:
    """Train configs/<recipe>_toy.yaml (+ key=value overrides) at run.seed=seed; SW of its samples (None where it
    has no such sampler)."""
    with tempfile.TemporaryDirectory() as out:
        config = load_config(ROOT / "configs" / f"{recipe}_toy.yaml", [
            *overrides, f"run.output_dir={out}", f"run.seed={seed}", "run.trackers=[]", "run.progress_bar=false",
            "run.num_samples=0", "run.checkpoint_every=0"])
        setup = build_setup(config)
        started = time.perf_counter()
        Trainer(setup.objective, setup.data, config.run, config.optimizers).fit()
        seconds = time.perf_counter() - started
    noise = torch.randn(1500, 2, generator=torch.Generator().manual_seed(0))
    data = setup.teacher.mixture.sample(1500, torch.Generator().manual_seed(1))
    student: dict[int, float | None] = {}
    for n in STEPS:
        try:
            sample = setup.objective.sample(noise, n, None, torch.Generator().manual_seed(2))
        except ValueError:  # e.g. a phased DMD student samples with exactly one step per expert
            student[n] = None
            continue
        student[n] = float(sliced_wasserstein(sample, data))
    teacher = {n: float(sliced_wasserstein(sample_ode(setup.teacher, noise, n), data)) for n in STEPS}
    return {"seed": seed, "train_steps": config.run.max_steps, "train_seconds": seconds, "student_sw": student,
            "teacher_euler_sw": teacher}


def summary(runs: list[dict]) -> dict[str, dict[int, float | None]]:
    """Median and worst (largest) student SW over the seeds, per step count."""
    out: dict[str, dict[int, float | None]] = {"median": {}, "worst": {}}
    for n in STEPS:
        values = [r["student_sw"][n] for r in runs if r["student_sw"][n] is not None]
        out["median"][n] = statistics.median(values) if values else None
        out["worst"][n] = max(values) if values else None
    return out


def table(rows: list[dict], teacher: dict[int, float]) -> str:
    def cell(row: dict, n: int) -> str:
        median, worst = row["median_sw"][n], row["worst_sw"][n]
        return "—" if median is None else f"{median:.3f} ({worst:.3f})"

    lines = ["| recipe | train steps | 1 step | 2 steps | 4 steps |", "|---|---|---|---|---|",
             "| teacher, Euler | — | " + " | ".join(f"{teacher[n]:.3f}" for n in STEPS) + " |"]
    lines += [f"| `{row['recipe']}` | {row['train_steps']} | " + " | ".join(cell(row, n) for n in STEPS) + " |"
              for row in rows]
    return "\n".join(lines) + "\n"


def step_keys(row: dict) -> dict:
    """A row read back from JSON, its per-step dicts keyed by int again."""
    return {k: {int(n): v for n, v in value.items()} if k.endswith("_sw") else value for k, value in row.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=RECIPES)
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="run seeds to train each recipe at")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for every recipe (repeatable); with it nothing is written")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--merge", action="store_true",
                        help="replace only these recipes' rows in benchmarks/results/toy_objectives.json (same seeds)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the tests run; float summation order (and so a GAN's path) depends on threads
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for recipe in args.recipes:
        runs = [evaluate(recipe, seed, args.set) for seed in seeds]
        stats = summary(runs)
        rows.append({"recipe": f"configs/{recipe}_toy.yaml", "train_steps": runs[0]["train_steps"],
                     "median_sw": stats["median"], "worst_sw": stats["worst"],
                     "teacher_euler_sw": runs[0]["teacher_euler_sw"],  # the teacher and its noise do not vary by seed
                     "runs": [{k: v for k, v in r.items() if k != "teacher_euler_sw"} for r in runs]})
        print(table(rows[-1:], runs[0]["teacher_euler_sw"]).splitlines()[-1], flush=True)
    if args.merge:
        previous = json.loads((RESULTS / "toy_objectives.json").read_text())
        if previous["seeds"] != seeds:
            parser.error(f"--merge: the existing rows use --seeds {','.join(map(str, previous['seeds']))}")
        fresh = {row["recipe"]: row for row in rows}
        rows = [fresh.pop(row["recipe"], step_keys(row)) for row in previous["rows"]] + list(fresh.values())
    teacher = rows[0]["teacher_euler_sw"]  # every recipe distils the same analytic ring
    text = table(rows, teacher)
    if not (args.no_write or args.set):  # the committed table describes the recipes as shipped
        write_result("toy_objectives", {"metric": "sliced Wasserstein to 1500 data samples (lower is better); "
                                                  "median (worst) over run seeds", "seeds": seeds,
                                        "rows": rows})
        (RESULTS / "toy_objectives.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
