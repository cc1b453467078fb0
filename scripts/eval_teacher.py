"""Measure the Animal-MNIST teacher: FD in classifier features at 1..32 Euler steps, with and without CFG.

Why these numbers: they are the bar every distilled 1-4 step student is judged against, and the
floor (FD of held-out real images) and ceiling (FD of pure noise) say what a given FD means.
Samples, noise, sampler and features are those of fewstep.evaluation.animal_mnist and fewstep.sampling,
which the demo and benchmarks/bundled_task.py use too, so the figures here are the benchmark's.
Each run adds its table (keyed by time grid and CFG scale) to the teacher's manifest.json, keeping
earlier tables measured on the same weights with the same protocol.
Usage: python scripts/eval_teacher.py [--teacher assets/animal_mnist/teacher | --checkpoint runs/teacher/checkpoint.pt]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewstep.data.animal_mnist import NULL_CLASS, NUM_CLASSES, TEACHER_DIR, load_classifier, sha256_file  # noqa: E402
from fewstep.evaluation.animal_mnist import fd_to_test, floor_and_ceiling, teacher_samples  # noqa: E402
from fewstep.models import build_denoiser, load_denoiser  # noqa: E402
from fewstep.models.base import Denoiser  # noqa: E402
from fewstep.training.visualize import save_image_grid  # noqa: E402

WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"
PROTOCOL = {"class_balanced": True, "noise": "fewstep.evaluation.animal_mnist.generate",
            "solver": "fewstep.sampling.sample_ode, Euler; fd keys '<time grid>_cfg<scale>'",
            "features": "classifier penultimate layer (assets/animal_mnist/classifier.json)",
            "reference": "test split (1000 images)"}


def load_teacher(args: argparse.Namespace) -> Denoiser:
    if args.checkpoint:
        from diffusers.training_utils import EMAModel
        from train_teacher import build_teacher

        model = build_teacher()
        ema = EMAModel(model.parameters())
        ema.load_state_dict(torch.load(args.checkpoint, weights_only=True)["ema"])
        ema.copy_to(model.parameters())
        return build_denoiser("dit", model.eval())
    return load_denoiser("dit", args.teacher).eval()


def forward_seconds(model: torch.nn.Module, batch: int = 64, repeats: int = 10) -> float:
    x, t, y = torch.randn(batch, 1, 28, 28), torch.full((batch,), 500.0), torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        model(x, t, y)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x, t, y)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=str(TEACHER_DIR))
    p.add_argument("--checkpoint", default=None, help="evaluate a training checkpoint's EMA instead (no manifest)")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--steps", default="1,2,4,8,16,32")
    p.add_argument("--cfg-scales", default="1.0,1.5")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=2024, help="noise seed (the benchmark's and the demo's: 2024)")
    p.add_argument("--time-grid", default="uniform", choices=["uniform", "diffusers"],
                   help="uniform: t = linspace(1, 0, steps + 1); diffusers: FlowMatchEulerDiscreteScheduler's sigmas, "
                        "whose last step only goes 0.001 -> 0, so N steps act like N-1")
    p.add_argument("--sample-images", default=None, help="save a PNG of 100 samples per (cfg, steps) to this folder")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    teacher, classifier = load_teacher(args), load_classifier()
    reference = floor_and_ceiling(args.num_samples)
    results = {
        "fd_train_vs_test": reference["train_vs_test"], "fd_noise_vs_test": reference["noise_vs_test"],
        "fd_train_vs_test_note": f"{args.num_samples} random train images vs the 1000 test images "
                                 "(fewstep.evaluation.animal_mnist.floor_and_ceiling)",
        "fd": {}, "class_accuracy": {},
    }
    print(f"floor FD(train vs test) {results['fd_train_vs_test']:.3f}  "
          f"FD(noise vs test) {results['fd_noise_vs_test']:.1f}")
    labels = torch.arange(args.num_samples) % NUM_CLASSES  # generate()'s class-balanced labels
    start = time.time()
    for cfg in [float(c) for c in args.cfg_scales.split(",")]:
        for steps in [int(s) for s in args.steps.split(",")]:
            images = teacher_samples(teacher, steps, cfg, args.num_samples, args.time_grid, args.seed)
            key = f"{args.time_grid}_cfg{cfg:g}"
            if args.sample_images:  # sample i has class i % 10: each column of the grid is one class
                save_image_grid(images[:100], Path(args.sample_images) / f"{key}_steps{steps}.png", nrow=NUM_CLASSES)
            results["fd"].setdefault(key, {})[str(steps)] = round(fd_to_test(images), 4)
            with torch.no_grad():
                hits = (classifier(images).argmax(1) == labels).float().mean().item()
            results["class_accuracy"].setdefault(key, {})[str(steps)] = round(hits, 4)
            print(f"cfg {cfg:g} steps {steps:2d}: FD {results['fd'][key][str(steps)]:.3f} "
                  f"class-acc {hits:.3f}  ({time.time() - start:.0f}s)", flush=True)
    results["forward_seconds_batch64"] = round(forward_seconds(teacher.model), 4)
    results["eval_protocol"] = {**PROTOCOL, "seed": args.seed, "num_samples": args.num_samples,
                                "threads": args.threads,
                                "command": "python scripts/eval_teacher.py " + " ".join(sys.argv[1:])}
    print(json.dumps(results, indent=2))
    if not args.checkpoint:
        write_manifest(Path(args.teacher), teacher.model, results)


def same_protocol(previous: dict, results: dict) -> bool:
    """Tables can be merged only when measured the same way (the command and thread count may differ)."""
    def strip(protocol: dict) -> dict:
        return {k: v for k, v in protocol.items() if k not in ("command", "threads")}
    return strip(previous.get("eval_protocol", {})) == strip(results["eval_protocol"])


def write_manifest(folder: Path, model: torch.nn.Module, results: dict) -> None:
    """Everything needed to trust and reproduce the committed teacher, next to its weights."""
    training = json.loads((folder / "training_state.json").read_text())
    digest = sha256_file(folder / WEIGHTS)
    previous_path = folder / "manifest.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    if previous.get("sha256") == digest and same_protocol(previous, results):  # keep earlier runs' other tables
        for key in ("fd", "class_accuracy"):
            results[key] = {**previous.get(key, {}), **results[key]}
        commands = previous.get("eval_commands", [])
    else:
        commands = []
    results["eval_commands"] = commands + [results["eval_protocol"]["command"]]
    manifest = {
        "weights": str(WEIGHTS), "sha256": digest,
        "model_class": "diffusers.DiTTransformer2DModel", "params": sum(q.numel() for q in model.parameters()),
        "prediction": "flow velocity eps - x0 on x_t = (1-t) x0 + t eps, timestep = 1000 t",
        "null_class": NULL_CLASS, "scheduler": "scheduler/ (FlowMatchEulerDiscreteScheduler, shift 1.0)",
        "data_split": "assets/animal_mnist/split.json (train 9000)",
        "training": {"steps": training["step"], "minutes": round(training["elapsed_s"] / 60, 1),
                     "hyperparameters": training["args"], "ema_decay_at_export": training["ema_decay_at_export"],
                     "command": training.get("command")},
        **results, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {folder / 'manifest.json'}")


if __name__ == "__main__":
    main()
