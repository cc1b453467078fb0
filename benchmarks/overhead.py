"""Is there waste in the loop? Times, in one process and on the same inputs:

* one CD training step through the Trainer vs the bare network passes that step must make
  (teacher forward, target forward, student forward + backward, AdamW step);
* 1- and 4-step student sampling vs 1 and 4 bare network forwards.

Targets (issue #2): step <= 1.10x bare passes; 1-step sampling <= 1.05x one forward.
Ratios are measured interleaved (bare, ours, bare, ours, ...) and reported as medians, so
machine load affects both sides alike. Absolute times are recorded but only meaningful on a GPU.

    python benchmarks/overhead.py [--size small|medium] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import write_result
from fewstep.config import OptimizerConfig, RunConfig
from fewstep.data_sources import SyntheticSource
from fewstep.config import SyntheticDataConfig
from fewstep.models import build_denoiser
from fewstep.objectives.consistency import ConsistencyDistillation
from fewstep.training.trainer import Trainer, step_generator

SIZES = {  # UNet2DModel configs: compute-bound enough that Python overhead is visible, if there is any
    "small": dict(sample_size=32, block_out_channels=(32, 64, 64), batch=8),
    "medium": dict(sample_size=32, block_out_channels=(64, 128, 128), batch=16),
}


def build_unet(size: str):
    from diffusers import UNet2DModel

    spec = dict(SIZES[size])
    batch = spec.pop("batch")
    torch.manual_seed(0)
    model = UNet2DModel(in_channels=3, out_channels=3, layers_per_block=1, norm_num_groups=16, attention_head_dim=16,
                        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), **spec)
    return model, batch, spec["sample_size"]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    model, batch, res = build_unet(args.size)
    teacher = build_denoiser("unet2d", model).to(device)
    import copy

    student = copy.deepcopy(teacher).requires_grad_(True)
    objective = ConsistencyDistillation(student, teacher, num_timesteps=20, solver="ddim")
    data = SyntheticSource(SyntheticDataConfig(batch_size=batch, shape=[3, res, res]), device=device)
    run = RunConfig(output_dir="/tmp/fewstep_overhead", max_steps=10**6, trackers=[], progress_bar=False,
                    num_samples=0, max_grad_norm=1.0)
    trainer = Trainer(objective, data, run, {"student": OptimizerConfig(lr=1e-5)})

    # the bare passes: same networks, same shapes, nothing but the math the step needs
    bare_student = copy.deepcopy(student.model)
    bare_teacher, bare_target = teacher.model, copy.deepcopy(student.model).requires_grad_(False)
    bare_opt = torch.optim.AdamW(bare_student.parameters(), lr=1e-5)
    x = torch.randn(batch, 3, res, res, device=device)
    t = torch.randint(0, 1000, (batch,), device=device).float()

    def bare_step() -> None:
        with torch.no_grad():
            bare_teacher(x, t).sample
            bare_target(x, t).sample
        loss = (bare_student(x, t).sample - x).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_student.parameters(), 1.0)
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    def our_step() -> None:
        trainer._update("student", "student", step_generator(0, 0, trainer.step, device))
        trainer.step += 1

    def bare_forwards(n: int):
        def run_n() -> None:
            with torch.no_grad():
                for _ in range(n):
                    bare_student(x, t).sample
        return run_n

    def our_sampling(n: int):
        generator = torch.Generator(device=device).manual_seed(0)
        return lambda: objective.sample(x, n, None, generator)

    pairs = {"train_step": (bare_step, our_step), "sample_1step": (bare_forwards(1), our_sampling(1)),
             "sample_4step": (bare_forwards(4), our_sampling(4))}
    results = {}
    for name, (bare, ours) in pairs.items():
        bare(), ours()  # warm-up
        bare_times, our_times = [], []
        for _ in range(args.repeats):
            bare_times.append(timed(bare))
            our_times.append(timed(ours))
        ratios = [o / b for o, b in zip(our_times, bare_times)]
        results[name] = {"bare_s_median": statistics.median(bare_times),
                         "fewstep_s_median": statistics.median(our_times),
                         "ratio_median": statistics.median(ratios), "ratios": ratios}
        print(f"{name:14s} bare {results[name]['bare_s_median']*1e3:8.1f} ms  "
              f"fewstep {results[name]['fewstep_s_median']*1e3:8.1f} ms"
              f"  ratio {results[name]['ratio_median']:.3f}")
    targets = {"train_step": 1.10, "sample_1step": 1.05}
    write_result(f"overhead_{args.size}_{device.type}", {
        "model": f"UNet2DModel {SIZES[args.size]}", "objective": "cd (ddim, no CFG)", "results": results,
        "targets": targets, "meets_targets": {k: results[k]["ratio_median"] <= v for k, v in targets.items()}})


if __name__ == "__main__":
    main()
