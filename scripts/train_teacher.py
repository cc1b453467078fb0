"""Train the bundled class-conditional rectified-flow teacher on Animal-MNIST (CPU, hours -> minutes).

Why this shape: `fewstep demo` distils this teacher on 2 CPU cores in minutes and the student
starts as a copy of it, so the network must be cheap per forward. A DiTTransformer2DModel with
4x4 patches (49 tokens at 28x28), width 128 and 6 blocks is ~2.1M parameters and ~0.8 s per
train step at batch 128 on one thread. Its LabelEmbedding drops the class to the null label
(index 10) 10% of the time in train mode, which is what makes classifier-free guidance work.

Objective (rectified flow on fewstep's FlowPath): x_t = (1-t) x0 + t eps, the network predicts
the velocity eps - x0 at model timestep 1000 t; t ~ logit-normal(0, 1) as in SD3.

Resumable: the run folder holds `checkpoint.pt` (model, EMA, optimizer, RNG states, step, time),
written atomically every few minutes; rerunning the same command continues from it.
Usage:  python scripts/train_teacher.py --run-dir runs/teacher --max-minutes 75
        python scripts/train_teacher.py --run-dir runs/teacher --export assets/animal_mnist/teacher
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel
from diffusers.training_utils import EMAModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewstep.diffusion.paths import FlowPath  # noqa: E402
from fewstep.diffusion.timesteps import sample_training_times  # noqa: E402
from fewstep.data.animal_mnist import NUM_CLASSES, AnimalMNIST  # noqa: E402

TEACHER_CONFIG = dict(num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=6,
                      sample_size=28, patch_size=4, num_embeds_ada_norm=NUM_CLASSES, norm_type="ada_norm_zero")


def build_teacher() -> DiTTransformer2DModel:
    return DiTTransformer2DModel(**TEACHER_CONFIG)


def flow_matching_loss(model: DiTTransformer2DModel, path: FlowPath, x0: torch.Tensor, labels: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """Rectified flow (Liu et al. 2022; SD3 Eq. 1 with logit-normal t): || v(x_t, t) - (eps - x0) ||^2."""
    t = sample_training_times(path, x0.shape[0], generator, distribution="logit_normal").float()
    eps = torch.randn(x0.shape, generator=generator)
    x_t = path.add_noise(x0, eps, t)
    velocity = model(x_t, path.model_timestep(t), labels).sample
    return (velocity - path.velocity(x0, eps, t)).square().mean()


def clipped_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, where: str) -> None:
    """One optimizer step with the gradient norm clipped to 1; a non-finite loss stops the run first (`where`: the
    step and what was kept)."""
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"non-finite loss at {where}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def atomic_save(obj: object, target: Path) -> None:
    """Write to a temp file then os.replace, so a kill mid-write never leaves a broken checkpoint."""
    tmp = target.with_suffix(target.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, target)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then constant (the run length is set by the clock, so no decay horizon)."""
    return args.lr * min(1.0, (step + 1) / args.warmup_steps)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    torch.manual_seed(args.seed)  # seeds the model init and DiT's internal label dropout
    data = AnimalMNIST("train")
    model = build_teacher()
    ema = EMAModel(model.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=0.75)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(args.seed + 1)  # batches, times and noise
    step, elapsed = 0, 0.0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed = state["step"], state["elapsed_s"]
        print(f"resumed from step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    path = FlowPath()
    model.train()
    start, last_save, running = time.time() - elapsed, time.time(), []
    session_start, session_first_step = time.time(), step

    def save() -> None:
        atomic_save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
                     "elapsed_s": time.time() - start, "args": vars(args)}, ckpt_path)

    while step < args.max_steps and (time.time() - start) < args.max_minutes * 60:
        index = torch.randint(len(data), (args.batch_size,), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        loss = flow_matching_loss(model, path, data.pixel_values[index], data.class_labels[index], generator)
        clipped_step(model, optimizer, loss, f"step {step}; last good checkpoint kept at {ckpt_path}")
        ema.step(model.parameters())
        step += 1
        running.append(loss.item())
        if step % args.log_every == 0:
            rate = (time.time() - session_start) / (step - session_first_step)
            print(f"step {step} loss {sum(running) / len(running):.4f} lr {learning_rate(step, args):.2e} "
                  f"ema_decay {ema.cur_decay_value:.4f} elapsed {(time.time() - start) / 60:.1f} min "
                  f"s/step {rate:.2f}", flush=True)
            running = []
        if time.time() - last_save > args.save_minutes * 60:
            save()
            last_save = time.time()
    save()
    print(f"done: {step} steps, {(time.time() - start) / 60:.1f} min", flush=True)


def training_command(hyperparameters: dict) -> str:
    """The command line that reproduces a run (every flag spelled out, so defaults changing later does not matter)."""
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in hyperparameters.items() if k != "export")
    return f"python scripts/train_teacher.py {flags}"


def export(args: argparse.Namespace) -> None:
    """EMA weights -> diffusers save_pretrained (safetensors) + the scheduler config it samples with."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    state = torch.load(Path(args.run_dir) / "checkpoint.pt", weights_only=True)
    model = build_teacher()
    ema = EMAModel(model.parameters())
    ema.load_state_dict(state["ema"])
    ema.copy_to(model.parameters())
    out = Path(args.export)
    model.save_pretrained(out / "transformer", safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).save_pretrained(out / "scheduler")
    info = {"step": state["step"], "elapsed_s": state["elapsed_s"], "args": state["args"],
            "ema_decay_at_export": ema.get_decay(ema.optimization_step), "command": training_command(state["args"])}
    (out / "training_state.json").write_text(json.dumps(info, indent=2))
    print(f"exported EMA weights of step {state['step']} to {out}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default="runs/teacher")
    p.add_argument("--export", default=None, help="export the run's EMA weights to this folder and exit")
    p.add_argument("--max-minutes", type=float, default=75.0)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--save-minutes", type=float, default=3.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    export(arguments) if arguments.export else train(arguments)
