"""Measure the Animal-MNIST teacher: FD in classifier features at 1..32 Euler steps, with and without CFG.

Why these numbers: they are the bar every distilled 1-4 step student is judged against, and the
floor (FD of held-out real images) and ceiling (FD of pure noise) say what a given FD means.
Samples are class-balanced and noise is seeded, so the numbers are reproducible. Each run adds its
table (keyed by time grid and CFG scale) to the teacher's manifest.json, keeping earlier tables.
Usage: python scripts/eval_teacher.py [--teacher assets/animal_mnist/teacher | --checkpoint runs/teacher/checkpoint.pt]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DiTTransformer2DModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewstep.data.animal_mnist import (NULL_CLASS, NUM_CLASSES, TEACHER_DIR, load_animal_mnist,  # noqa: E402
                                       load_classifier, sha256_file, to_model_range)
from fewstep.diffusion.paths import FlowPath  # noqa: E402
from fewstep.diffusion.solvers import euler_step  # noqa: E402
from fewstep.diffusion.timesteps import sampling_times  # noqa: E402
from fewstep.evaluation.frechet import feature_statistics, frechet_distance  # noqa: E402

WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"


@torch.no_grad()
def guided_velocity(model: DiTTransformer2DModel, x_t: torch.Tensor, t: float, labels: torch.Tensor,
                    cfg_scale: float) -> torch.Tensor:
    """v_uncond + w (v_cond - v_uncond) in one fused batch (Ho & Salimans 2022, Eq. 6); w = 1 skips the null pass."""
    timestep = torch.full((x_t.shape[0],), FlowPath().model_timestep(torch.tensor(t)).item())
    if cfg_scale == 1.0:
        return model(x_t, timestep, labels).sample
    both = model(torch.cat([x_t, x_t]), torch.cat([timestep, timestep]),
                 torch.cat([labels, torch.full_like(labels, NULL_CLASS)])).sample
    cond, uncond = both.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


@torch.no_grad()
def euler_times(steps: int, grid: str) -> list[float]:
    """'uniform': t = linspace(1, 0, steps + 1), every step does work. 'diffusers': FlowMatchEulerDiscreteScheduler's
    sigmas (linspace(1, 1/1000, steps) then 0), whose last step only goes 0.001 -> 0, so N steps act like N-1."""
    if grid == "uniform":
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    if grid == "diffusers":
        return sampling_times(FlowPath(), steps).tolist()
    raise ValueError(f"unknown time grid {grid!r}; expected uniform or diffusers")


@torch.no_grad()
def sample(model: DiTTransformer2DModel, labels: torch.Tensor, steps: int, cfg_scale: float,
           generator: torch.Generator, grid: str = "uniform", batch: int = 250) -> torch.Tensor:
    """Euler on the flow ODE from t=1 (noise) to t=0."""
    times = euler_times(steps, grid)
    out = []
    for start in range(0, len(labels), batch):
        y = labels[start:start + batch]
        x = torch.randn((len(y), 1, 28, 28), generator=generator)
        for t, t_next in zip(times[:-1], times[1:]):
            x = euler_step(x, torch.tensor(t), torch.tensor(t_next), guided_velocity(model, x, t, y, cfg_scale))
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


@torch.no_grad()
def features_and_logits(classifier: torch.nn.Module, images: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    feats = torch.cat([classifier.features(images[i:i + 500]) for i in range(0, len(images), 500)])
    return feats.double().numpy(), classifier.head(feats)


def save_grid(images: torch.Tensor, path: Path, columns: int = NUM_CLASSES) -> None:
    """First rows x 10 samples as one PNG (sample i has class i % 10, so each column is one class)."""
    from PIL import Image

    rows = len(images) // columns
    pixels = ((images[:rows * columns, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    grid = pixels.reshape(rows, columns, 28, 28).permute(0, 2, 1, 3).reshape(rows * 28, columns * 28)
    Image.fromarray(grid.numpy()).save(path)


def fd(feats: np.ndarray, ref_stats: tuple[np.ndarray, np.ndarray]) -> float:
    return frechet_distance(*feature_statistics(feats), *ref_stats)


def load_teacher(args: argparse.Namespace) -> DiTTransformer2DModel:
    if args.checkpoint:
        from diffusers.training_utils import EMAModel
        from train_teacher import build_teacher

        model = build_teacher()
        ema = EMAModel(model.parameters())
        ema.load_state_dict(torch.load(args.checkpoint, weights_only=True)["ema"])
        ema.copy_to(model.parameters())
        return model.eval()
    return DiTTransformer2DModel.from_pretrained(Path(args.teacher) / "transformer").eval()


def forward_seconds(model: DiTTransformer2DModel, batch: int = 64, repeats: int = 10) -> float:
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-grid", default="uniform", choices=["uniform", "diffusers"])
    p.add_argument("--sample-images", default=None, help="save a PNG of 100 samples per (cfg, steps) to this folder")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, classifier = load_teacher(args), load_classifier()
    test_images, _ = load_animal_mnist("test")
    train_images, _ = load_animal_mnist("train")
    ref_feats, _ = features_and_logits(classifier, to_model_range(test_images))
    ref_stats = feature_statistics(ref_feats)
    rng = np.random.default_rng(args.seed)
    train_subset = train_images[rng.choice(len(train_images), args.num_samples, replace=False)]
    noise = torch.randn((args.num_samples, 1, 28, 28), generator=torch.Generator().manual_seed(args.seed)).clamp(-1, 1)
    results = {
        "fd_train_vs_test": fd(features_and_logits(classifier, to_model_range(train_subset))[0], ref_stats),
        "fd_noise_vs_test": fd(features_and_logits(classifier, noise)[0], ref_stats),
        "fd_train_vs_test_note": f"{args.num_samples} random train images (seed {args.seed}) vs the 1000 test images",
        "fd": {},
        "class_accuracy": {},
    }
    print(f"floor FD(train vs test) {results['fd_train_vs_test']:.3f}  "
          f"FD(noise vs test) {results['fd_noise_vs_test']:.1f}")
    labels = torch.arange(args.num_samples) % NUM_CLASSES
    start = time.time()
    for cfg in [float(c) for c in args.cfg_scales.split(",")]:
        for steps in [int(s) for s in args.steps.split(",")]:
            images = sample(model, labels, steps, cfg, torch.Generator().manual_seed(args.seed), args.time_grid)
            feats, logits = features_and_logits(classifier, images)
            if args.sample_images:
                Path(args.sample_images).mkdir(parents=True, exist_ok=True)
                save_grid(images[:100], Path(args.sample_images) / f"{args.time_grid}_cfg{cfg:g}_steps{steps}.png")
            key = f"{args.time_grid}_cfg{cfg:g}"
            results["fd"].setdefault(key, {})[str(steps)] = round(fd(feats, ref_stats), 4)
            hits = (logits.argmax(1) == labels).float().mean().item()
            results["class_accuracy"].setdefault(key, {})[str(steps)] = round(hits, 4)
            print(f"cfg {cfg:g} steps {steps:2d}: FD {results['fd'][key][str(steps)]:.3f} "
                  f"class-acc {hits:.3f}  ({time.time() - start:.0f}s)", flush=True)
    results["forward_seconds_batch64"] = round(forward_seconds(model), 4)
    results["eval_protocol"] = {"num_samples": args.num_samples, "class_balanced": True, "seed": args.seed,
                                "solver": "Euler; fd keys '<time grid>_cfg<scale>' (see euler_times)",
                                "features": "classifier penultimate layer (assets/animal_mnist/classifier.json)",
                                "reference": "test split (1000 images)", "threads": args.threads,
                                "command": "python scripts/eval_teacher.py " + " ".join(sys.argv[1:])}
    print(json.dumps(results, indent=2))
    if not args.checkpoint:
        write_manifest(Path(args.teacher), model, results)


def write_manifest(folder: Path, model: DiTTransformer2DModel, results: dict) -> None:
    """Everything needed to trust and reproduce the committed teacher, next to its weights."""
    training = json.loads((folder / "training_state.json").read_text())
    digest = sha256_file(folder / WEIGHTS)
    previous_path = folder / "manifest.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    if previous.get("sha256") == digest:  # same weights: keep the tables of earlier runs (other grids / scales)
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
