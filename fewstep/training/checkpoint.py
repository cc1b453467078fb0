"""Atomic, complete checkpoints.

accelerate's save_state writes every prepared network, optimiser, LR scheduler, grad scaler
and the RNG states of every process; we add the trainer's own state (step, EMA weights, the
objective's evolving state, each rank's data position) as safetensors + JSON. Everything is
written into a hidden temp folder that is renamed into place only when complete, so a crash
mid-save never touches the last good checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

LATEST = "latest"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json_atomic(path: Path, payload: Any) -> None:
    _write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


def save_checkpoint(accelerator: Accelerator, run_dir: str | Path, step: int, trainer_state: dict[str, Any],
                    tensors: dict[str, dict[str, torch.Tensor]], data_state: dict[str, Any], keep: int) -> Path:
    """Save everything for an exact resume; returns the checkpoint folder. Call on every rank."""
    root = checkpoint_root(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    _write_json_atomic(tmp / f"data_state_{accelerator.process_index}.json", data_state)
    if accelerator.is_main_process:
        for name, group in tensors.items():
            if group:
                save_file({k: v.detach().contiguous().cpu() for k, v in group.items()},
                          str(tmp / f"{name}.safetensors"))
        _write_json_atomic(tmp / "trainer_state.json", trainer_state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)  # a re-save of the same step replaces it whole
        os.replace(tmp, final)
        _write_text_atomic(root / LATEST, final.name)
        _prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(run_dir: str | Path, which: str) -> Path:
    """'latest', a checkpoint's name under the run's checkpoints/ (e.g. 'step-00000500') or its path -> an
    existing complete checkpoint folder (clear error otherwise)."""
    root = checkpoint_root(run_dir)
    if which != LATEST:
        for path in (Path(which), root / which):
            if (path / "trainer_state.json").is_file():
                return path
        names = sorted(p.name for p in root.glob("step-*") if (p / "trainer_state.json").is_file())
        raise FileNotFoundError(f"{which} is not a fewstep checkpoint (no trainer_state.json); pass 'latest', one of "
                                f"{names or 'no complete checkpoints'} (in {root}), or a checkpoint folder's path")
    pointer = root / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(f"--resume latest: no checkpoint in {root}; "
                                "start without --resume, or point run.output_dir at the run to continue")
    return root / pointer.read_text().strip()


def load_checkpoint(accelerator: Accelerator,
                    path: Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Restore accelerate's part in place; return (trainer_state, tensor groups, this rank's data state)."""
    accelerator.load_state(str(path))
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    tensors = {f.stem: load_file(str(f)) for f in path.glob("*.safetensors") if not f.stem.startswith("model")}
    data_file = path / f"data_state_{accelerator.process_index}.json"
    data_state = json.loads(data_file.read_text()) if data_file.is_file() else {}
    return trainer_state, tensors, data_state


def network_weights(checkpoint: Path, default_order: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The trainable networks' weights in a checkpoint, by network name. accelerate numbers its model files in
    the order the trainer prepared the networks, which trainer_state.json records ('networks'); checkpoints
    written before it was recorded are read in `default_order` (the loading objective's own order)."""
    names = json.loads((checkpoint / "trainer_state.json").read_text()).get("networks", default_order)
    files = [checkpoint / ("model.safetensors" if i == 0 else f"model_{i}.safetensors") for i in range(len(names))]
    return {name: load_file(str(f)) for name, f in zip(names, files) if f.is_file()}
