"""Re-time the bundled teacher onto a dense time embedding (SANA-Sprint, Chen et al. 2025, Sec. 3.2).

Why: the bundled DiT embeds time as diffusers does, sinusoids of the timestep 1000 t, so it wiggles in t on the
scale of a few timesteps and sCM's tangent dF/dt is spent on those wiggles (fewstep/objectives/CONSISTENCY_README.md,
"Time wiggles"). SANA-Sprint feeds the timestep at a scale where the highest frequency is about one radian over the
whole time range and fine-tunes the teacher briefly. Here the copy is fitted to the teacher itself, not to data:

    min || v_dense(x_t, s t) - v_teacher(x_t, 1000 t) ||^2,   x_t = (1 - t) x0 + t eps,  t ~ U(0, 1),

with the class dropped to the null label 10% of the time (both networks see the same label), so the copy keeps the
teacher's conditional and unconditional velocities (CFG) and nothing else changes. s is the new
`num_train_timesteps` of its scheduler config: FlowMatchEulerDiscreteScheduler passes sigma * num_train_timesteps as
the timestep, so a diffusers pipeline and fewstep's FlowPath both feed the copy its dense time with no code of ours.

Usage:  python scripts/retime_teacher.py --out runs/teacher_dense_time            # then its FD per Euler step count:
        python benchmarks/teacher_solvers.py --teacher runs/teacher_dense_time --name teacher_solvers_dense_time \
            --rows euler:uniform:32,euler:uniform:8,euler:uniform:4
Writes a diffusers folder (transformer/, scheduler/) plus retime.json (command, fit, time).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewstep.data.animal_mnist import NUM_CLASSES, TEACHER_DIR, AnimalMNIST  # noqa: E402
from fewstep.diffusion.paths import FlowPath  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_teacher import clipped_step  # noqa: E402

LABEL_DROPOUT = 0.1  # the teacher's own training rate (DiT's LabelEmbedding), so CFG keeps working


def velocity_fit_loss(copy: DiTTransformer2DModel, copy_path: FlowPath, teacher: DiTTransformer2DModel,
                      teacher_path: FlowPath, x0: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
    """|| v_copy(x_t, copy timestep) - v_teacher(x_t, teacher timestep) ||^2 at t ~ U(0, 1), labels as given."""
    t = torch.rand(len(x0), generator=generator)
    x_t = teacher_path.add_noise(x0, torch.randn(x0.shape, generator=generator), t)
    with torch.no_grad():
        target = teacher(x_t, teacher_path.model_timestep(t), labels).sample
    return (copy(x_t, copy_path.model_timestep(t), labels).sample - target).square().mean()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=str(TEACHER_DIR))
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-train-timesteps", type=int, default=1, help="the copy's timestep is t times this")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher = DiTTransformer2DModel.from_pretrained(args.teacher, subfolder="transformer").eval().requires_grad_(False)
    copy = DiTTransformer2DModel.from_pretrained(args.teacher, subfolder="transformer").eval()  # no internal dropout
    teacher_path, copy_path = FlowPath(1000), FlowPath(args.num_train_timesteps)
    data = AnimalMNIST("train")
    optimizer = torch.optim.AdamW(copy.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    start, running, log = time.time(), [], []
    for step in range(1, args.steps + 1):
        index = torch.randint(len(data), (args.batch_size,), generator=generator)
        labels = data.class_labels[index].clone()
        labels[torch.rand(len(labels), generator=generator) < LABEL_DROPOUT] = NUM_CLASSES  # the null label
        loss = velocity_fit_loss(copy, copy_path, teacher, teacher_path, data.pixel_values[index], labels, generator)
        clipped_step(copy, optimizer, loss, f"step {step}; nothing was written to {args.out}")
        schedule.step()
        running.append(loss.item())
        if step % 100 == 0 or step == args.steps:
            log.append({"step": step, "loss": sum(running) / len(running)})
            print(f"step {step} velocity mse {log[-1]['loss']:.5f} {(time.time() - start) / 60:.1f} min", flush=True)
            running = []
    out = Path(args.out)
    copy.save_pretrained(out / "transformer", safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=args.num_train_timesteps, shift=1.0).save_pretrained(
        out / "scheduler")
    command = shlex.join(["python", "scripts/retime_teacher.py", *(sys.argv[1:] if argv is None else argv)])
    (out / "retime.json").write_text(json.dumps({"command": command, "source": args.teacher, "args": vars(args),
                                                 "velocity_mse": log, "minutes": (time.time() - start) / 60}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
