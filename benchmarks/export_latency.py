"""Sampling latency of an exported few-step SDXL-architecture student vs its teacher's 25/50-step CFG sampling.

    python benchmarks/export_latency.py                 # GPU: SDXL UNet from its public config, fp16, 128x128 latents
    python benchmarks/export_latency.py --tiny --out /tmp/latency.json  # CPU smoke run on a tiny UNet (no timing claim)

Same run, same random-weight UNet (an exported LoRA, fused or not, has the UNet's cost; weights do not change
speed): the student's denoising loop with the shipped LCMScheduler at 1 and 4 steps (batch 1, no CFG: the export
is guidance-distilled) against EulerDiscreteScheduler at 25 and 50 steps with CFG 7.5 (conditional + unconditional
in one batch of 2). Text encoding and VAE decoding are left out: both pipelines run them once, identically.
Median of `--repeats` timed runs after a warm-up. Writes benchmarks/results/export_latency.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SDXL_UNET, write_result  # noqa: E402


def build_unet(tiny: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    if tiny:
        from fewstep.models.tiny import tiny_unet2d_condition

        unet = tiny_unet2d_condition(sdxl=True)
    else:
        unet = UNet2DConditionModel(**SDXL_UNET)
    return unet.to(device=device, dtype=dtype).eval()


def conditioning(unet, batch: int, device: torch.device, dtype: torch.dtype) -> dict:
    tokens, width = 77, unet.config.cross_attention_dim
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return {"encoder_hidden_states": torch.randn(batch, tokens, width, device=device, dtype=dtype),
            "added_cond_kwargs": {"text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
                                  "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * batch, device=device,
                                                           dtype=dtype)}}


@torch.no_grad()
def student_loop(unet, scheduler, steps: int, latents: torch.Tensor, cond: dict) -> torch.Tensor:
    timesteps = [999] if steps == 1 else [999 - i * (1000 // steps) for i in range(steps)]
    scheduler.set_timesteps(timesteps=timesteps, device=latents.device)
    x = latents
    for t in scheduler.timesteps:
        out = unet(x, t, **cond).sample
        x = scheduler.step(out, t, x).prev_sample
    return x


@torch.no_grad()
def teacher_loop(unet, scheduler, steps: int, latents: torch.Tensor, cond2: dict,
                 guidance: float = 7.5) -> torch.Tensor:
    scheduler.set_timesteps(steps, device=latents.device)
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([x, x]), t)
        uncond, text = unet(inp, t, **cond2).sample.chunk(2)
        x = scheduler.step(uncond + guidance * (text - uncond), t, x).prev_sample
    return x


def timed(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> float:
    fn()  # warm-up (cuDNN autotuning, allocator)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny UNet on CPU: checks the script, no timing claim")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/export_latency.json)")
    args = parser.parse_args(argv)
    from diffusers import EulerDiscreteScheduler, LCMScheduler
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # LCMScheduler warns about any custom schedule off its 50-step grid

    if not args.tiny and not torch.cuda.is_available():
        print("export_latency: needs a CUDA GPU for the SDXL-size run (use --tiny for a CPU smoke run)")
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    unet = build_unet(args.tiny, device, dtype)
    size = unet.config.sample_size
    latents = torch.randn(1, 4, size, size, device=device, dtype=dtype)
    cond1, cond2 = conditioning(unet, 1, device, dtype), conditioning(unet, 2, device, dtype)
    sd = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    lcm, euler = LCMScheduler(**sd), EulerDiscreteScheduler(**sd, timestep_spacing="leading", steps_offset=1)
    seconds = {f"student_{n}step": timed(lambda n=n: student_loop(unet, lcm, n, latents, cond1), args.repeats, device)
               for n in (1, 4)}
    seconds.update({f"teacher_{n}step_cfg": timed(lambda n=n: teacher_loop(unet, euler, n, latents, cond2),
                                                   args.repeats, device) for n in (25, 50)})
    ratios = {f"teacher_{t}step_cfg / student_{s}step": seconds[f"teacher_{t}step_cfg"] / seconds[f"student_{s}step"]
              for t in (25, 50) for s in (1, 4)}
    payload = {"model": ("tiny SDXL-layout UNet (smoke run)" if args.tiny
                         else "SDXL UNet (public config), random weights"),
               "dtype": str(dtype), "latent": [4, size, size], "repeats": args.repeats,
               "seconds_median": seconds, "speedup": ratios,
               "scope": "denoising loop only (text encoders and VAE excluded: identical in both pipelines)"}
    if args.out:
        import json

        from common import environment

        Path(args.out).write_text(json.dumps({"environment": environment(), **payload}, indent=2))
    else:
        write_result("export_latency", payload)
    print(payload["speedup"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
