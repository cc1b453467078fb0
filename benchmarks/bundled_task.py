"""The bundled Animal-MNIST task: distil the committed teacher with every landed objective at a fixed
budget and measure FD (bundled classifier features, vs the held-out test split) per method x steps.

    python benchmarks/bundled_task.py                       # all recipes configs/<method>_animal_mnist.yaml
    python benchmarks/bundled_task.py --methods cd --train-steps 400 --num-eval 1000
    python benchmarks/bundled_task.py --inception 2048      # + Inception FID (grey->RGB, clean resize) for the
                                                            #   teacher (32 steps) and each method's best setting
    python benchmarks/bundled_task.py --methods sid --merge # add / replace one method's rows in the existing
                                                            #   results (same num-eval; teacher rows kept)
    python benchmarks/bundled_task.py --from-runs --methods sid,dmd2 --inception 2048
                                                            # no training: re-evaluate the students saved under
                                                            #   --out by earlier runs, or at each recipe's own
                                                            #   run.output_dir (FD rows, + Inception FID),
                                                            #   merged into the results like --merge
    python benchmarks/bundled_task.py --withdraw cd_long --withdraw-steps 2,4 --why "..."
                                                            # no evaluation: drop rows (and Inception FIDs) that a
                                                            #   code fix made wrong and whose students are gone,
                                                            #   recording why; re-evaluating a method clears it

Writes benchmarks/results/bundled_task.json, bundled_task.md and bundled_task.png.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundled_task_report import STUDENT_STEPS, inception_subject, write_table_and_plot  # noqa: E402
from common import RESULTS, run_label, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEACHER_STEPS = (1, 2, 4, 8, 16, 32)
REFERENCE_KEYS = {"real_train_images", "teacher_32step"}  # Inception FIDs that do not depend on a method
RETIMED_TEACHER = "runs/teacher_dense_time"  # scripts/retime_teacher.py's copy on a dense time embedding


def recipe(method: str) -> Path:
    """The bundled-task recipe of a method: configs/<method>_animal_mnist.yaml."""
    return REPO / "configs" / f"{method}_animal_mnist.yaml"


def available_methods() -> list[str]:
    return sorted(p.name.removesuffix("_animal_mnist.yaml") for p in (REPO / "configs").glob("*_animal_mnist.yaml"))


def distil(method: str, train_steps: int | None, out_root: Path):
    from fewstep.build import build_setup
    from fewstep.config import load_config
    from fewstep.training.trainer import Trainer

    overrides = [f"run.output_dir={out_root / method}", "run.progress_bar=false", "run.trackers=[]",
                 *([f"run.max_steps={train_steps}"] if train_steps else [])]
    config = load_config(recipe(method), overrides)
    pretrained = config.model.pretrained
    if pretrained == RETIMED_TEACHER and not (REPO / pretrained).is_dir():  # made once, as the recipe's comment says
        sys.path.insert(0, str(REPO / "scripts"))
        from retime_teacher import main as retime_teacher

        retime_teacher(["--out", str(REPO / pretrained)])
    elif pretrained and pretrained.startswith("runs/") and not (REPO / pretrained).is_dir():
        raise SystemExit(f"{method} distils {pretrained}, which is not there yet: {recipe(method).name}'s comment "
                         "says how to make it")
    pairs = getattr(config.objective, "regression_pairs", None)
    if pairs:  # DMD's regression loss: teacher ODE pairs, made once with the recipe's documented command
        pairs = Path(pairs) if Path(pairs).is_absolute() else REPO / pairs
        if not pairs.is_file():
            sys.path.insert(0, str(REPO / "scripts"))
            from make_dmd_pairs import main as make_pairs

            make_pairs(["--config", str(recipe(method)), "--out", str(pairs), "--num", "2000", "--steps", "32"])
        config.objective.regression_pairs = str(pairs)
    if config.student.init != "teacher":
        config.student.init = str(source_run(config.student.init, out_root, method))
    setup = build_setup(config)
    start = time.perf_counter()
    Trainer(setup.objective, setup.data, config.run, config.optimizers, config.to_dict()).fit()
    return setup, config, time.perf_counter() - start


def recipes_writing(output_dir: str) -> list[str]:
    """The methods whose recipe (configs/<method>_animal_mnist.yaml) has this run.output_dir."""
    from fewstep.config import load_config

    return [m for m in available_methods()
            if load_config(recipe(m)).run.output_dir == output_dir]


def source_run(init: str, out_root: Path, method: str) -> Path:
    """A recipe started from another recipe's run (student.init: that recipe's run.output_dir) starts, here,
    from the run this benchmark trained for that recipe under out_root."""
    sources = recipes_writing(init)
    if not sources:
        raise SystemExit(f"{method}: student.init {init} is not the run.output_dir of a configs/*_animal_mnist.yaml "
                         "recipe")
    source = sources[0]
    if not (out_root / source / "checkpoints" / "latest").is_file():
        raise SystemExit(f"{method} starts from the {source} recipe's run: run `python benchmarks/"
                         f"bundled_task.py --methods {source} --merge` first")
    return out_root / source


def saved_run(method: str, out_root: Path) -> Path:
    """Where an earlier run saved a method's student: under out_root (this script's runs), else at the recipe's own
    run.output_dir (where `fewstep distill --config configs/<method>_animal_mnist.yaml` writes)."""
    from fewstep.config import load_config

    candidates = [out_root / method] + ([REPO / load_config(recipe(method)).run.output_dir]
                                        if recipe(method).is_file() else [])
    for run_dir in candidates:
        if (run_dir / "config.yaml").is_file():
            return run_dir
    raise SystemExit(f"no saved run for {method} at {' or '.join(map(str, candidates))}: run `python benchmarks/"
                     f"bundled_task.py --methods {method} --merge` first")


def reload(method: str, out_root: Path):
    """A student saved by an earlier run: (setup, config, training seconds or None)."""
    import yaml

    from fewstep.config import build_config
    from fewstep.runs import load_run
    from fewstep.training.checkpoint import resolve_checkpoint

    run_dir = saved_run(method, out_root)
    config = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    checkpoint = finished_checkpoint(resolve_checkpoint(run_dir, "latest"), config.run.max_steps)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(r["time/step_seconds"] for r in rows) if all("time/step_seconds" in r for r in rows) else None
    return load_run(run_dir, str(checkpoint)), config, seconds


def finished_checkpoint(checkpoint: Path, max_steps: int) -> Path:
    """The checkpoint itself if it holds the final student; a run still training is refused (its latest checkpoint
    is an earlier one, which once got scored as the final student)."""
    step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    if step < max_steps:
        raise SystemExit(f"{checkpoint.parent.parent} has trained {step} of its {max_steps} steps (latest checkpoint "
                         f"{checkpoint.name}): wait for it to finish, then rerun")
    return checkpoint


def inception_stats(images: torch.Tensor):
    """Inception pool features' mean / covariance of images in [-1, 1] (grey silhouettes as RGB, clean resize)."""
    from fewstep.evaluation.features import load_fid_inception
    from fewstep.evaluation.pipeline import FeaturePipeline
    from fewstep.evaluation.stats import compute_stats

    pipeline = FeaturePipeline(load_fid_inception(), pixel_range="minus_one_one", resize_mode="clean")
    return compute_stats(images.clamp(-1, 1).expand(-1, 3, -1, -1), pipeline, allow_small=True, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(available_methods()))
    parser.add_argument("--train-steps", type=int, default=None, help="budget per method (default: each recipe's)")
    parser.add_argument("--num-eval", type=int, default=1000)
    parser.add_argument("--inception", type=int, default=0, help="also Inception FID on this many samples (>= 2048)")
    parser.add_argument("--out", default="runs/bundled_task")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other methods' rows and the teacher's (FD and Inception) from "
                             "benchmarks/results/bundled_task.json")
    parser.add_argument("--from-runs", action="store_true",
                        help="no training: evaluate the methods' final students saved under --out or at their recipes' "
                             "run.output_dir (implies --merge)")
    parser.add_argument("--withdraw", default="", help="methods whose rows at --withdraw-steps to drop (see --why)")
    parser.add_argument("--withdraw-steps", default="2,4")
    parser.add_argument("--supersede", default="",
                        help="methods whose rows stay but are marked as trained by code since changed (see --why)")
    parser.add_argument("--why", default="",
                        help="the reason recorded with each withdrawn or superseded run (required)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite bundled_task.{md,png} from bundled_task.json (after a change to how they "
                             "are drawn)")
    args = parser.parse_args()
    if args.render:
        render(read_results())
        return
    if args.withdraw or args.supersede:
        if not args.why:
            parser.error("--withdraw / --supersede need --why: the JSON and the table say why")
        with results_lock():
            payload = (withdrawn(read_results(), args.withdraw.split(","),
                                 {int(s) for s in args.withdraw_steps.split(",")}, args.why) if args.withdraw
                       else superseded(read_results(), args.supersede.split(","), args.why))
            write_result("bundled_task", {k: v for k, v in payload.items() if k != "environment"})
        render(payload)
        return
    merge = args.merge or args.from_runs
    methods = [m for m in args.methods.split(",") if m]
    previous = read_results() if merge else None
    if previous is not None and previous["num_eval"] != args.num_eval:
        parser.error(f"--merge: the existing results use --num-eval {previous['num_eval']}; rerun with it")
    old_inception = (previous or {}).get("inception_fid_vs_train", {})
    if args.inception and old_inception and old_inception["num_samples"] != args.inception:
        parser.error(f"the existing Inception FIDs use {old_inception['num_samples']} samples; rerun with "
                     f"--inception {old_inception['num_samples']}")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from fewstep.evaluation.animal_mnist import fd_to_test, floor_and_ceiling, student_samples, teacher_samples

    rows, times, best = [], {}, {}
    teacher = guidance = None
    for method in methods:
        if args.from_runs:
            setup, config, seconds = reload(method, Path(args.out))
            seconds = seconds if seconds is not None else previous["training"].get(method, {}).get("train_seconds")
        else:
            setup, config, seconds = distil(method, args.train_steps, Path(args.out))
        times[method] = {"train_seconds": seconds, "train_steps": config.run.max_steps}
        if config.student.init != "teacher":  # its budget adds to that run's
            times[method]["started_from"] = run_label(config.student.init)
        if teacher is None:
            teacher, guidance = setup.teacher, config.objective.guidance_scale
        setup.student.eval()
        for steps in STUDENT_STEPS:
            try:
                x = student_samples(setup.objective, steps, args.num_eval)
            except ValueError as err:  # e.g. a phased DMD student samples only with one step per expert
                print(f"{method}: no {steps}-step sampler ({err})", flush=True)
                continue
            rows.append({"model": method, "steps": steps, "fd": fd_to_test(x)})
            print(rows[-1], flush=True)
        best_row = min((r for r in rows if r["model"] == method), key=lambda r: r["fd"])
        best[method] = (setup, best_row["steps"])
    for steps in (() if merge else TEACHER_STEPS):
        x = teacher_samples(teacher, steps, guidance, args.num_eval)
        rows.append({"model": f"teacher (Euler, CFG {guidance})", "steps": steps, "fd": fd_to_test(x)})
        print(rows[-1], flush=True)
    inception = {}
    if args.inception:  # a merge keeps the teacher's and the floor's values on disk, as it keeps the teacher's FD rows
        references = not merge or not REFERENCE_KEYS <= set(old_inception.get("values", {}))
        inception = inception_fids(teacher, guidance, {m: (setup.objective, n) for m, (setup, n) in best.items()},
                                   args.inception, references)
    payload = {"metric": "FD, bundled classifier features, vs test split", "num_eval": args.num_eval,
               "teacher_sampler": "Euler on an even time grid, CFG as in the recipe",
               "student_weights": "final training weights (not the EMA)",
               "rows": rows, "training": times, "reference": floor_and_ceiling(args.num_eval)}
    if inception:
        payload["inception_fid_vs_train"] = {"num_samples": args.inception, "values": inception}
    with results_lock():  # merged with what is on disk now, so runs in parallel keep each other's rows
        if merge:
            payload = merged(read_results(), payload, methods, set(available_methods()))
        write_result("bundled_task", payload)
    render(payload)


def read_results() -> dict:
    return json.loads((RESULTS / "bundled_task.json").read_text())


@contextlib.contextmanager
def results_lock():
    with open(RESULTS / ".bundled_task.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def merged(previous: dict, payload: dict, methods: list[str], shipped: set[str]) -> dict:
    """`payload`'s methods replace theirs in `previous` (in their old places; new ones after the rest); the
    teacher's rows and the other methods' are kept, except those of methods no longer `shipped` as a recipe."""
    stale = set(methods) | {r["model"] for r in previous["rows"] if r["model"] not in shipped}
    teacher = [r for r in previous["rows"] if r["model"].startswith("teacher")]
    students = [r for r in previous["rows"] if r["model"] not in stale and r not in teacher] + payload["rows"]
    order = list(dict.fromkeys(r["model"] for r in previous["rows"] + payload["rows"]))
    rows = sorted(students, key=lambda r: order.index(r["model"])) + teacher
    times = {**{k: v for k, v in previous["training"].items() if k not in stale}, **payload["training"]}
    # a re-trained method's old Inception FID no longer describes its student
    old = previous.get("inception_fid_vs_train", {})
    values = {k: v for k, v in old.get("values", {}).items() if inception_subject(k) not in stale}
    new = payload.get("inception_fid_vs_train", {})
    values.update(new.get("values", {}))
    out = {**payload, "rows": rows, "training": times}
    for note in ("withdrawn", "superseded"):  # a re-evaluated method's notes no longer apply
        kept = {m: w for m, w in previous.get(note, {}).items() if m not in stale}
        if kept:
            out[note] = kept
    if values:
        out["inception_fid_vs_train"] = {"num_samples": new.get("num_samples") or old["num_samples"], "values": values}
    return out


def require_rows(previous: dict, methods: list[str], flag: str) -> None:
    """Stop, naming them, if some `methods` have no rows in the results (a typo would mark nothing)."""
    unknown = set(methods) - {r["model"] for r in previous["rows"]}
    if unknown:
        raise SystemExit(f"{flag}: no rows for {sorted(unknown)} in benchmarks/results/bundled_task.json")


def withdrawn(previous: dict, methods: list[str], steps: set[int], why: str) -> dict:
    """`previous` without `methods`' rows and Inception FIDs at `steps`, each withdrawal recorded with `why`: for
    figures a code fix made wrong whose saved students are gone. Their other rows stay."""
    require_rows(previous, methods, "--withdraw")

    out = {**previous, "rows": [r for r in previous["rows"] if not (r["model"] in methods and r["steps"] in steps)]}
    inception = previous.get("inception_fid_vs_train")
    if inception:  # a method's keys read "<method>_<steps>step"
        values = {k: v for k, v in inception["values"].items()
                  if not (inception_subject(k) in methods and int(k.rsplit("_", 1)[1].removesuffix("step")) in steps)}
        out["inception_fid_vs_train"] = {**inception, "values": values}
    out["withdrawn"] = {**previous.get("withdrawn", {}), **{m: {"steps": sorted(steps), "why": why} for m in methods}}
    return out


def inception_fids(teacher, guidance: float, best: dict, num: int, references: bool = True) -> dict[str, float]:
    """Inception FID vs `num` train images: each method at its best step count and, with `references`, the
    real-vs-real floor (other train images) and the teacher at 32 Euler steps."""
    from fewstep.data.animal_mnist import load_animal_mnist, to_model_range
    from fewstep.evaluation.animal_mnist import student_samples, teacher_samples
    from fewstep.evaluation.frechet import frechet_distance

    train_images, _ = load_animal_mnist("train")  # stored class by class: a seeded random subset is class-balanced
    order = np.random.default_rng(0).permutation(len(train_images))
    ref = inception_stats(to_model_range(np.asarray(train_images)[order[:num]]))

    def fid(images: torch.Tensor) -> float:
        gen = inception_stats(images)
        return frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)

    fids = {}
    if references:
        if len(order) >= 2 * num:  # the floor: other real train images (as many) against the reference
            fids["real_train_images"] = fid(to_model_range(np.asarray(train_images)[order[num:2 * num]]))
        fids["teacher_32step"] = fid(teacher_samples(teacher, 32, guidance, num))
        print(fids, flush=True)
    for method, (objective, steps) in best.items():
        fids[f"{method}_{steps}step"] = fid(student_samples(objective, steps, num))
        print(method, fids[f"{method}_{steps}step"], flush=True)
    return fids


def superseded(previous: dict, methods: list[str], why: str) -> dict:
    """`previous` with `methods` marked as trained by code that has changed since (their recipes now train
    differently, their students are gone): rows kept, each marked with `why`; re-evaluating a method clears it."""
    require_rows(previous, methods, "--supersede")
    return {**previous, "superseded": {**previous.get("superseded", {}), **{m: why for m in methods}}}


def recipe_objectives(models: list[str]) -> dict[str, str]:
    """objective.name of each model's recipe (configs/<model>_animal_mnist.yaml); models without one are left out."""
    from fewstep.config import load_config

    return {m: load_config(recipe(m)).objective.name for m in models if recipe(m).is_file()}


def render(payload: dict) -> None:
    """bundled_task.{md,png} from the results, each run judged by its recipe's objective."""
    write_table_and_plot(payload, recipe_objectives([r["model"] for r in payload["rows"]]))


if __name__ == "__main__":
    main()
