"""Open a finished (or running) run directory: its config, its checkpoints, samplers over them.

Used by `fewstep fid --gen RUN_DIR` and `fewstep bench RUN_DIR` (generate_fn hooks) and by export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import yaml
from safetensors.torch import load_file

from .build import Setup, build_setup
from .config import build_config
from .training.checkpoint import checkpoint_root, network_weights, resolve_checkpoint

GenerateFn = Callable[[int, int, int], torch.Tensor]


def load_run(run_dir: str | Path, checkpoint: str = "latest", ema: bool = False,
             device: torch.device | str = "cpu", training_state: bool = False) -> Setup:
    """Rebuild the run's teacher/student/objective from config.yaml and load a checkpoint's student weights.

    training_state: also every other trained network (fake score, discriminator heads) and the objective's own
    state (e.g. sCM's update count behind its tangent warm-up), for probes of the objective's losses."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a fewstep run directory (no config.yaml)")
    setup = build_setup(build_config(yaml.safe_load(config_file.read_text())), device, initialise=False)
    path = resolve_checkpoint(run_dir, checkpoint)
    networks = setup.objective.trainable_networks()
    weights = network_weights(path, list(networks))
    for name in networks if training_state else ["student"]:  # the student: e.g. Phased DMD's expert mixture
        missing, unexpected = networks[name].load_state_dict(weights[name], strict=False)
        if unexpected or [k for k in missing if not k.startswith("teacher.")]:
            raise ValueError(f"checkpoint {path} does not fit the run's {name}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    if training_state:
        setup.objective.load_extra_state(load_file(str(path / "objective_state.safetensors")))
    student = networks["student"]
    if ema:
        shadow = load_file(str(path / "ema_student.safetensors"))
        params = [p for p in student.parameters() if p.requires_grad]
        for i, p in enumerate(params):
            p.data.copy_(shadow[str(i)])
    return setup.__class__(setup.teacher, setup.student.to(device).eval(), setup.objective.to(device), setup.data,
                           setup.text_encoder)


def make_generate_fn(setup: Setup, device: torch.device | str = "cpu") -> GenerateFn:
    """(n, steps, seed) -> n student samples in [-1, 1] (channels-first), classes cycled if conditional."""
    shape = tuple(setup.data.sample_shape())

    @torch.no_grad()
    def generate(n: int, steps: int, seed: int) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn((n, *shape), generator=generator, device=device)
        cond = setup.data.sample_conditions(n)
        return setup.objective.sample(noise, steps, cond, generator).clamp(-1, 1).float().cpu()

    generate.pixel_range = "minus_one_one"  # type: ignore[attr-defined]
    return generate


def generators_for_run(run_dir: str | Path) -> dict[str, GenerateFn]:
    """One generator per kept checkpoint (and its EMA when the run kept one), for fid/bench."""
    names = sorted(p.name for p in checkpoint_root(run_dir).glob("step-*") if p.is_dir())
    if not names:
        raise FileNotFoundError(f"no checkpoints under {checkpoint_root(run_dir)}")
    out: dict[str, GenerateFn] = {}
    for name in names:
        path = checkpoint_root(run_dir) / name
        out[name] = make_generate_fn(load_run(run_dir, str(path)))
        if (path / "ema_student.safetensors").is_file():
            out[f"{name}-ema"] = make_generate_fn(load_run(run_dir, str(path), ema=True))
    return out
