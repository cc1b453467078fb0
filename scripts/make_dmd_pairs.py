"""Teacher ODE pairs (noise z, teacher sample from z) for DMD's regression loss (Yin et al. 2024, Eq. 9).

Builds the teacher and the data source of a recipe, draws conditionings from the data (class labels or
prompt embeddings), runs the teacher's deterministic sampler with the recipe's guidance scale, and writes
one safetensors file: `noise`, `sample` and `cond.<key>` tensors. Point objective.regression_pairs at it.

Usage: python scripts/make_dmd_pairs.py --config configs/dmd_toy.yaml --out runs/pairs.safetensors \
           [--num 10000] [--steps 50] [--solver euler] [--guidance-scale W] [--seed 0] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewstep.build import build_data, build_teacher, build_text_encoder  # noqa: E402
from fewstep.config import load_config  # noqa: E402
from fewstep.models.base import NON_BATCHED_COND_KEYS  # noqa: E402
from fewstep.sampling import sample_ode  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--num", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--solver", default="euler", choices=["euler", "ddim", "heun"])
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="default: the recipe's objective.guidance_scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = build_teacher(config.model).to(device).eval()
    data = build_data(config, teacher, torch.device(device), text_encoder=build_text_encoder(config.model, teacher))
    guidance = (args.guidance_scale if args.guidance_scale is not None
                else getattr(config.objective, "guidance_scale", 1.0))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    noises, samples, conds = [], [], []
    done = 0
    while done < args.num:
        batch = data.next_batch(generator)
        n = min(len(batch), args.num - done)
        cond = (None if batch.cond is None
                else {k: v if k in NON_BATCHED_COND_KEYS else v[:n] for k, v in batch.cond.items()})
        noise = torch.randn((n, *batch.x0.shape[1:]), generator=generator, device=device)
        samples.append(sample_ode(teacher, noise, args.steps, cond, guidance, args.solver).float().cpu())
        noises.append(noise.cpu())
        conds.append(cond)
        done += n
    tensors = {"noise": torch.cat(noises).contiguous(), "sample": torch.cat(samples).contiguous()}
    if conds[0] is not None:
        for key in conds[0]:
            parts = [c[key].cpu() for c in conds]
            tensors[f"cond.{key}"] = (parts[0] if key in NON_BATCHED_COND_KEYS else torch.cat(parts)).contiguous()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": str(args.config), "steps": args.steps, "solver": args.solver, "guidance_scale": guidance}
    save_file(tensors, str(out), metadata={"fewstep": json.dumps(meta)})
    print(f"wrote {args.num} pairs to {out} ({meta})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
