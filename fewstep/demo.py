"""`fewstep demo`: distil the bundled teacher on this machine in minutes and show the student beats it.

Default task: the committed Animal-MNIST teacher (a class-conditional DiT flow-matching model on real
28x28 silhouettes) is distilled with configs/sid_animal_mnist.yaml (SiD, data-free; the best 1-step FD per
CPU minute in benchmarks/results/bundled_task.json) through the same config -> trainer path as every recipe.
Teacher (Euler, CFG) and student are then measured at equal step counts by FD in
the bundled classifier's features against the held-out test split. `--task toy` runs the analytic
Gaussian-mixture version instead (exact metric, seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RECIPES = {"animal_mnist": REPO / "configs" / "sid_animal_mnist.yaml", "toy": REPO / "configs" / "cd_toy.yaml"}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--task", choices=sorted(RECIPES), default="animal_mnist")
    parser.add_argument("--output-dir", default="runs/demo", help="where the run, samples and results go")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--num-eval", type=int, default=1000, help="samples per FD measurement")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    return parser


def run(args: argparse.Namespace) -> int:
    from .build import build_setup
    from .config import load_config
    from .training.trainer import Trainer

    overrides = [f"run.output_dir={args.output_dir}"] + ([f"run.max_steps={args.steps}"] if args.steps else [])
    config = load_config(RECIPES[args.task], overrides + list(args.overrides))
    if args.task == "animal_mnist":
        _require_bundled_teacher(config.model.pretrained)
    setup = build_setup(config)
    start = time.perf_counter()
    Trainer(setup.objective, setup.data, config.run, config.optimizers, config.to_dict()).fit()
    train_seconds = time.perf_counter() - start
    measure = _measure_animal_mnist if args.task == "animal_mnist" else _measure_toy
    rows, metric = measure(setup, config, Path(args.output_dir), args.num_eval)
    print(f"\ntrained {config.run.max_steps} steps in {train_seconds:.0f} s; {metric}")
    width = max(len(r["model"]) for r in rows) + 2
    print(f"{'model':<{width}}{'steps':>6}{'score':>10}")
    for r in rows:
        print(f"{r['model']:<{width}}{r['steps'] or '-':>6}{r['score']:>10.3f}")
    out = Path(args.output_dir) / "demo_results.json"
    out.write_text(json.dumps({"task": args.task, "metric": metric, "train_seconds": train_seconds,
                               "train_steps": config.run.max_steps, "rows": rows}, indent=2))
    print(f"results: {out}; sample grids: {args.output_dir}/demo_*.png")
    if args.task == "animal_mnist":
        print("export the student as a diffusers folder: "
              f"fewstep export {args.output_dir} --format full --out exports/demo")
    return 0


def _require_bundled_teacher(pretrained: str | None) -> None:
    folder = REPO / (pretrained or "")
    if not (folder / "transformer" / "config.json").is_file():
        raise SystemExit(f"the bundled teacher is missing at {folder}; it is committed with the repository "
                         "(git lfs is not used) — re-clone, or run `fewstep demo --task toy`")


@torch.no_grad()
def _measure_animal_mnist(setup, config, out_dir: Path, n: int) -> tuple[list[dict], str]:
    from .data.animal_mnist import NUM_CLASSES
    from .evaluation.animal_mnist import fd_to_test, floor_and_ceiling, student_samples, teacher_samples
    from .training.visualize import save_image_grid

    guidance = config.objective.guidance_scale
    rows = []
    for steps in (1, 4):  # the 32-step teacher costs minutes on a CPU: its figure comes from the manifest below
        x = teacher_samples(setup.teacher, steps, guidance, n)
        rows.append({"model": f"teacher (Euler, CFG {guidance:g})", "steps": steps, "score": fd_to_test(x)})
    rows += _manifest_rows(guidance)
    setup.student.eval()
    for steps in (1, 2):
        x = student_samples(setup.objective, steps, n)
        rows.append({"model": f"student ({config.objective.name})", "steps": steps, "score": fd_to_test(x)})
        save_image_grid(x[:40], out_dir / f"demo_student_{steps}step.png", nrow=NUM_CLASSES)
    rows.append({"model": "real train images (floor)", "steps": 0, "score": floor_and_ceiling(n)["train_vs_test"]})
    return rows, f"FD in the bundled classifier's features vs the test split, {n} samples (lower is better)"


def _manifest_rows(guidance: float) -> list[dict]:
    """The committed teacher's 32-step FD as measured by scripts/eval_teacher.py (the same teacher_samples /
    fd_to_test as the rows measured here: same noise, classifier, reference and even time grid)."""
    from .data.animal_mnist import TEACHER_DIR

    manifest = TEACHER_DIR / "manifest.json"
    if not manifest.is_file():
        return []
    table = json.loads(manifest.read_text()).get("fd", {}).get(f"uniform_cfg{guidance:g}", {})
    if "32" not in table:
        return []
    return [{"model": f"teacher (Euler, CFG {guidance:g}) [manifest]", "steps": 32, "score": float(table["32"])}]


@torch.no_grad()
def _measure_toy(setup, config, out_dir: Path, n: int) -> tuple[list[dict], str]:
    from .sampling import sample_ode
    from .toy import sliced_wasserstein
    from .training.visualize import save_scatter

    mixture = setup.teacher.mixture
    noise = torch.randn(n, *mixture.event_shape, generator=torch.Generator().manual_seed(1234))
    reference = mixture.sample(n, torch.Generator().manual_seed(4321))
    rows = [{"model": "teacher (Euler)", "steps": s,
             "score": sliced_wasserstein(sample_ode(setup.teacher, noise, s), reference)}
            for s in (1, 4, 32)]
    for steps in (1, 2):
        x = setup.objective.sample(noise, steps, None, torch.Generator().manual_seed(99))
        rows.append({"model": f"student ({config.objective.name})", "steps": steps,
                     "score": sliced_wasserstein(x, reference)})
        save_scatter(x, out_dir / f"demo_student_{steps}step.png", reference, f"student, {steps} step")
    return rows, "sliced W1 distance to the true data distribution (lower is better)"
