"""The model card (README.md) written into every export: method, base model, steps, scheduler, guidance,
and benchmark figures only where a measured result exists (a run's own `fewstep bench` table, or a
repository result that names this base model); no figure is ever made up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .families import ExportFamily
from .schedulers import FewStepScheduler

REPO = Path(__file__).resolve().parents[2]


def benchmark_sections(run_dir: Path, base_model: str) -> list[tuple[str, str]]:
    """(source, markdown) pairs of measured results that belong to this run or its base model."""
    found: list[tuple[str, str]] = []
    for md in sorted(run_dir.glob("**/bench.md")):
        found.append((str(md), md.read_text().strip()))
    for root in {REPO / "benchmarks" / "results", Path.cwd() / "benchmarks" / "results"}:
        for result in sorted(root.glob("*.json")) if root.is_dir() else []:
            try:
                text = result.read_text()
                json.loads(text)
            except (OSError, ValueError):
                continue
            if base_model and base_model in text:
                table = result.with_suffix(".md")
                found.append((str(result), table.read_text().strip() if table.is_file()
                              else f"See `{result.name}` (JSON) for the figures."))
    return found


def model_card(info: dict[str, Any], spec: FewStepScheduler, family: ExportFamily, run_dir: Path,
               absent: Sequence[str] = ()) -> str:
    """The export's README.md; `absent`: pipeline components saved as null, which loading must pass as None."""
    fmt, base = info["format"], info["base_model"]
    steps = spec.recommended_steps
    n = steps[0]
    kwargs = {"num_inference_steps": n, **spec.set_timesteps_kwargs(n), **info["call_kwargs"]}
    call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    what = "prompt='a photo of a cat'" if family.text else "class_labels=[0]"
    own = spec.library != "diffusers"  # fewstep's own scheduler: its module must be imported before loading
    imports = "import diffusers" + (f"\nimport {spec.library}  # the shipped scheduler's class" if own else "")
    scheduler_cls = f"{spec.library}.{spec.class_name}"
    none_kwargs = "".join(f", {name}=None" for name in absent)  # e.g. a pixel-space DiT has no VAE
    if not family.text:
        load = (f"{imports}\n"
                f"pipe = diffusers.{family.pipeline_class}.from_pretrained('EXPORT_DIR'{none_kwargs})\n"
                f"# {family.pipeline_class} cannot take custom timesteps / class labels: run its loop with the\n"
                f"# shipped scheduler (fewstep.export.families.scheduler_loop does exactly this), or\n"
                f"#   fewstep sample --model EXPORT_DIR --steps {n} --class 0")
    elif fmt == "full":
        load = (f"{imports}\npipe = diffusers.{family.pipeline_class}.from_pretrained('EXPORT_DIR')\n"
                + ("pipe.load_lora_weights('EXPORT_DIR')  # not fused: the LoRA sits next to the base weights\n"
                   if info.get("lora_unfused") else "")
                + f"image = pipe({what}, {call}).images[0]")
    else:
        weight = f", weight_name='{info['weight_name']}'"
        load = (f"{imports}\n"
                f"pipe = diffusers.{family.pipeline_class}.from_pretrained('{base}')\n"
                f"pipe.scheduler = {scheduler_cls}.from_pretrained('EXPORT_DIR', subfolder='scheduler')\n"
                f"pipe.load_lora_weights('EXPORT_DIR'{weight})\n"
                f"image = pipe({what}, {call}).images[0]")
    schedules = "\n".join(f"| {k} | {spec.class_name} | {v} |" for k, v in
                          ((k, spec.set_timesteps_kwargs(k)) for k in sorted(spec.steps)))
    flux = family.name == "flux"
    cfg_name = "true_cfg_scale" if flux else "guidance_scale"
    guidance = (f"Guidance is distilled into the student: keep {cfg_name}={spec.guidance_scale} (no CFG). "
                "A CFG scale above 1 applies guidance twice (over-saturated images) and doubles the cost; negative "
                "prompts need CFG, so they have no effect." if spec.guidance_distilled else
                f"Trained without distilled guidance; the recommended {cfg_name} is {spec.guidance_scale}.")
    if flux and "guidance_scale" in info["call_kwargs"]:
        guidance += (f" FLUX: guidance_scale={info['call_kwargs']['guidance_scale']} is the embedded guidance value "
                     "the student was trained with (a model input, not CFG).")
    notes = [spec.notes] if spec.notes else []
    if spec.class_name == "LCMScheduler":
        notes.append("LCMScheduler logs a warning when a custom schedule does not start at timestep 999; the "
                     "timesteps above are the student's and are correct.")
    if base.startswith("tiny:"):
        notes.append(f"`{base}` is a random test model: `fewstep.models.tiny.tiny_pipeline('{family.name}')`.")
    benches = benchmark_sections(run_dir, base)
    bench_md = ("\n\n".join(f"From `{src}`:\n\n{md}" for src, md in benches)
                if benches else "No benchmark figures were recorded for this run "
                                "(`fewstep bench RUN_DIR` measures them).")
    tags = ["fewstep", "diffusers", "few-step", spec.method] + (["lora"] if fmt != "full" else [])
    front = "\n".join(["---", "library_name: diffusers", f"base_model: {base}",
                       "tags:", *[f"- {t}" for t in tags], "---"])
    return f"""{front}

# {spec.method.upper()} few-step student of `{base}`

Distilled with fewstep {info['fewstep_version']} from run `{info['run_dir']}`
(checkpoint `{info['checkpoint']}`{', EMA weights' if info['ema'] else ''}).

| | |
|---|---|
| method | {spec.method} |
| base model | `{base}` (sha256 of its network weights: `{info['base_model_sha256'][:16]}...`) |
| format | {fmt}{' (LoRA fused)' if info.get('fused') else ''}, {info['dtype']}, safetensors |
| pipeline | {family.pipeline_class} |
| recommended steps | {', '.join(map(str, steps))} |
| scheduler | {scheduler_cls if own else spec.class_name} (in `scheduler/`) |
| {'guidance_scale (embedded)' if flux else 'guidance_scale'} | {info['call_kwargs'].get('guidance_scale', spec.guidance_scale)} |

## Usage

```python
{load}
```

Pass the timesteps / sigmas below: the scheduler's default spacing is NOT the grid the student was trained on.

| steps | scheduler | set_timesteps / pipeline kwargs |
|---|---|---|
{schedules}

{guidance}
{''.join(chr(10) + '- ' + n for n in notes)}

## Benchmarks

{bench_md}

## Files

`fewstep_export.json` holds the scheduler, per-step schedules, call kwargs, base-model hash and the export's
own round-trip verification; every `.safetensors` file carries the same facts in its metadata (`fewstep.*`).
"""  # noqa: E501 (a markdown table row of the card template; splitting it would change the card)
