"""Every objective's shipped toy recipe on the exact Gaussian-mixture task (2-D ring, flow path): sliced
Wasserstein distance to the data (1500 samples, fixed seeds) at 1, 2 and 4 steps, next to the teacher's Euler
sampler at the same step counts. CPU, about 2 minutes.

    python benchmarks/toy_objectives.py            # writes benchmarks/results/toy_objectives.{json,md}
"""

from __future__ import annotations

import argparse
import tempfile
import time
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


def evaluate(recipe: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as out:
        config = load_config(ROOT / "configs" / f"{recipe}_toy.yaml", [
            f"run.output_dir={out}", "run.trackers=[]", "run.progress_bar=false", "run.num_samples=0",
            "run.checkpoint_every=0"])
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
    return {"recipe": f"configs/{recipe}_toy.yaml", "train_steps": config.run.max_steps, "train_seconds": seconds,
            "student_sw": student, "teacher_euler_sw": teacher}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=RECIPES)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = [evaluate(r) for r in args.recipes]
    write_result("toy_objectives", {"metric": "sliced Wasserstein to 1500 data samples (lower is better)", "rows": rows})
    lines = ["| recipe | train steps | 1 step | 2 steps | 4 steps |", "|---|---|---|---|---|"]
    teacher = rows[0]["teacher_euler_sw"]
    lines.append("| teacher, Euler | — | " + " | ".join(f"{teacher[n]:.3f}" for n in STEPS) + " |")
    for row in rows:
        sw = row["student_sw"]
        lines.append(f"| `{row['recipe']}` | {row['train_steps']} | " + " | ".join("—" if sw[n] is None else f"{sw[n]:.3f}" for n in STEPS) + " |")
    (RESULTS / "toy_objectives.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
