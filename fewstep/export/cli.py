"""`fewstep export` and `fewstep sample`.

    fewstep export RUN_DIR --format lora|kohya|full [--ema] [--fuse] [--dtype fp16|bf16|fp32] [--out DIR]
    fewstep sample --model EXPORT_DIR|RUN_DIR --steps N (--prompt P ... | --class C ...) --n 16 --seed S --out DIR

Wire into fewstep/cli.py with add_export_parser(sub).set_defaults(func=run_export) and
add_sample_parser(sub).set_defaults(func=run_sample) (the parsers already set them).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

CFG_TWICE = ("guidance_scale={g} on a guidance-distilled student applies classifier-free guidance twice "
             "(over-saturated images, twice the cost); the student was trained to be used at {rec}")


def _steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps takes comma-separated integers, got {text!r}") from None


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a run's student to diffusers (LoRA, kohya LoRA, or full pipeline) with its scheduler",
        description="Export a fewstep run to diffusers, with the few-step scheduler and exact timesteps; the export "
                    "is loaded back and checked (keys, finite output, differs from base) before it is written.")
    p.add_argument("run_dir", help="a fewstep run directory (has config.yaml and checkpoints/)")
    p.add_argument("--format", dest="fmt", choices=["lora", "kohya", "full"], default="lora",
                   help="lora: pipe.load_lora_weights; kohya: ComfyUI/A1111 key names; full: a pipeline folder")
    p.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint folder")
    p.add_argument("--ema", action="store_true", help="export the EMA weights (run.ema_decay must have been set)")
    p.add_argument("--fuse", action="store_true", help="full: fuse the LoRA into the network (a plain pipeline)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp32")
    p.add_argument("--steps", type=_steps, default=None, help="step counts to ship schedules for (default: "
                   "run.sample_steps), e.g. 1,2,4")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/export-<format>-<dtype>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip loading the export back (not recommended: nothing then checks the keys)")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from .core import ExportError, export_run, read_info
    from .lora import LoraLoadError
    from .schedulers import SchedulerExportError

    try:
        out = export_run(args.run_dir, args.fmt, args.out, checkpoint=args.checkpoint, ema=args.ema, fuse=args.fuse,
                         dtype=args.dtype, steps=args.steps, verify=args.verify, overwrite=args.overwrite)
    except (ExportError, LoraLoadError, SchedulerExportError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = read_info(out)
    check = info.get("verification") or {}
    print(json.dumps({"export": str(out), "format": info["format"], "pipeline": info["pipeline_class"],
                      "scheduler": info["scheduler"]["class_name"], "steps": info["recommended_steps"],
                      "guidance_scale": info["call_kwargs"].get("guidance_scale"),
                      "verified": bool(check), "max_abs_diff_vs_base": check.get("max_abs_diff_vs_base")}))
    return 0


# ---------------- sample ----------------
def add_sample_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sample", help="generate images from an export folder or a run directory",
                              description="Sample a few-step student: an export (diffusers pipeline + shipped "
                                          "scheduler) or a run directory (the trainer's own sampler).")
    p.add_argument("--model", required=True, help="an export folder (fewstep_export.json) or a run directory")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the first recommended)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prompt", action="append", default=None, help="prompt (repeat for several; cycled)")
    what.add_argument("--class", dest="classes", type=int, action="append", default=None,
                      help="class label (repeat for several; cycled)")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder: 000.png ... and grid.png")
    p.add_argument("--guidance", type=float, default=None,
                   help="CFG scale (default: the export's recommendation, usually 1 = guidance distilled in)")
    p.add_argument("--base", default=None, help="LoRA exports: base pipeline folder / hub id (default: the export's)")
    p.add_argument("--checkpoint", default="latest", help="run directories: 'latest' or a checkpoint folder")
    p.add_argument("--ema", action="store_true", help="run directories: use the EMA weights")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=run_sample)
    return p


def run_sample(args: argparse.Namespace) -> int:
    from .core import ExportError
    from .lora import LoraLoadError
    from .schedulers import SchedulerExportError

    model = Path(args.model)
    try:
        if (model / "fewstep_export.json").is_file():
            images, meta = _sample_export(args)
        elif (model / "config.yaml").is_file():
            images, meta = _sample_run(args)
        else:
            raise FileNotFoundError(f"{model} is neither a fewstep export (fewstep_export.json) nor a run directory "
                                    "(config.yaml)")
    except (ExportError, LoraLoadError, SchedulerExportError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write_images(images, args.out, meta)
    print(json.dumps({"images": len(paths) - 1, "grid": str(paths[-1]), "steps": meta["steps"]}))
    return 0


def _cycle(values: list[Any] | None, n: int) -> list[Any] | None:
    return None if not values else [values[i % len(values)] for i in range(n)]


def _warn_cfg(guidance: float | None, distilled: bool, recommended: float) -> None:
    if guidance is not None and guidance > 1.0 and distilled:
        message = CFG_TWICE.format(g=guidance, rec=f"guidance_scale={recommended}")
        warnings.warn(message, stacklevel=3)
        print(f"warning: {message}", file=sys.stderr)


def _sample_export(args: argparse.Namespace) -> tuple[torch.Tensor, dict[str, Any]]:
    from .core import load_export
    from .families import decode, latent_size_multiple

    loaded = load_export(args.model, base=args.base)
    loaded.pipe.set_progress_bar_config(disable=True)
    spec, family, info = loaded.spec, loaded.family, loaded.info
    steps = args.steps or spec.recommended_steps[0]
    _warn_cfg(args.guidance, spec.guidance_distilled, spec.guidance_scale)
    c, h, w = info["sample_shape"]
    m = latent_size_multiple(loaded.pipe, family)
    h, w = -(-h // m) * m, -(-w // m) * m
    noise_gen = torch.Generator().manual_seed(args.seed)
    step_gen = torch.Generator().manual_seed(args.seed + 1)
    prompts, classes = _cycle(args.prompt, args.n), _cycle(args.classes, args.n)
    if family.text and prompts is None:
        raise ValueError(f"{family.pipeline_class} exports need --prompt")
    if not family.text:
        if args.guidance not in (None, 1.0):
            raise ValueError("fewstep sample runs class-conditional exports without CFG (guidance is distilled in)")
        classes = classes or list(range(args.n))
    kwargs: dict[str, Any] = {}
    if args.guidance is not None and family.text:
        if family.name == "flux":  # guidance_scale is FLUX's embedded guidance; CFG is true_cfg_scale
            kwargs.update(true_cfg_scale=args.guidance, negative_prompt=" ")
        else:
            kwargs["guidance_scale"] = args.guidance
    chunks = []
    for start in range(0, args.n, args.batch_size):
        b = min(args.batch_size, args.n - start)
        noise = torch.randn((b, c, h, w), generator=noise_gen)
        latents = loaded.generate(steps, noise, generator=step_gen,
                                  prompts=prompts[start:start + b] if prompts else None,
                                  class_labels=torch.tensor(classes[start:start + b]) if classes else None, **kwargs)
        chunks.append(decode(loaded.pipe, latents).clamp(-1, 1).cpu())
    meta = {"model": str(args.model), "source": "export", "steps": steps, "seed": args.seed,
            "guidance": args.guidance if args.guidance is not None else info["call_kwargs"].get("guidance_scale"),
            "prompts": prompts, "classes": classes, "scheduler": spec.class_name, **spec.set_timesteps_kwargs(steps)}
    return torch.cat(chunks), meta


def _sample_run(args: argparse.Namespace) -> tuple[torch.Tensor, dict[str, Any]]:
    from .core import open_run

    run = open_run(args.model, args.checkpoint, args.ema, steps=[args.steps] if args.steps else None)
    setup, family, spec = run.setup, run.family, run.spec
    steps = args.steps or spec.recommended_steps[0]
    if args.guidance not in (None, 1.0):
        _warn_cfg(args.guidance, spec.guidance_distilled, spec.guidance_scale)
        raise ValueError("run directories are sampled with the student's own sampler, which has no CFG; export the "
                         "run (fewstep export) to sample through a diffusers pipeline with guidance")
    prompts, classes = _cycle(args.prompt, args.n), _cycle(args.classes, args.n)
    encoder = setup.text_encoder if family.text else None
    if family.text and prompts is None:
        raise ValueError("this run is text-conditional: pass --prompt")
    n_classes = getattr(setup.teacher, "num_classes", None)
    if not family.text and n_classes:
        classes = classes or [i % n_classes for i in range(args.n)]
    shape = tuple(setup.data.sample_shape())
    noise_gen = torch.Generator().manual_seed(args.seed)
    step_gen = torch.Generator().manual_seed(args.seed + 1)
    vae = _run_vae(run)
    chunks = []
    with torch.no_grad():
        for start in range(0, args.n, args.batch_size):
            b = min(args.batch_size, args.n - start)
            noise = torch.randn((b, *shape), generator=noise_gen)
            if encoder is not None:
                cond = encoder(prompts[start:start + b])
            elif classes:
                cond = {"class_labels": torch.tensor(classes[start:start + b])}
            else:
                cond = None
            x = setup.objective.sample(noise, steps, cond, step_gen)
            chunks.append((vae.decode(x) if vae is not None else x).float().clamp(-1, 1).cpu())
    meta = {"model": str(args.model), "source": "run", "checkpoint": run.checkpoint, "ema": args.ema, "steps": steps,
            "seed": args.seed, "guidance": 1.0, "prompts": prompts, "classes": classes}
    return torch.cat(chunks), meta


def _run_vae(run: Any):
    """The teacher pipeline's VAE as a LatentCodec (None for pixel-space teachers)."""
    from ..models.encoders import LatentCodec

    model = run.config.model
    if run.family.name == "ddpm":
        return None
    if model.tiny:
        from ..models.tiny import tiny_pipeline_components

        vae = tiny_pipeline_components(run.family.name).get("vae")
        return LatentCodec(vae) if vae is not None else None
    import diffusers

    try:
        index = diffusers.DiffusionPipeline.load_config(str(model.pretrained))
    except (OSError, ValueError):
        return None  # a network folder without a pipeline: latents are written as images
    entry = index.get("vae")
    if not entry or entry[1] is None:
        return None
    return LatentCodec(getattr(diffusers, entry[1]).from_pretrained(str(model.pretrained), subfolder="vae"))


def write_images(images: torch.Tensor, out: str | Path, meta: dict[str, Any]) -> list[Path]:
    """000.png, 001.png, ... and grid.png (images in [-1, 1]); samples.json records how they were made."""
    from PIL import Image

    from ..training.visualize import save_image_grid, to_uint8_images

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(to_uint8_images(images[:, :3] if images.shape[1] >= 3 else images[:, :1])):
        path = out / f"{i:03d}.png"
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
        paths.append(path)
    paths.append(save_image_grid(images, out / "grid.png"))
    (out / "samples.json").write_text(json.dumps(meta, indent=2, default=str))
    return paths
