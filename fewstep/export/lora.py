"""LoRA weights out of a fewstep student and back into diffusers, with nothing dropped on the way.

Formats
- diffusers/peft: written by the pipeline class's own `save_lora_weights(<network>_lora_layers=...)`
  (keys `unet.<module>.lora_A.weight` / `transformer.<module>.lora_B.weight`), loaded with
  `pipe.load_lora_weights(dir)`.
- kohya / ComfyUI: `<prefix><module path with '.' -> '_'>.lora_down.weight` (= lora_A, rank x in),
  `.lora_up.weight` (= lora_B, out x rank) and `.alpha` (scalar); prefix `lora_unet_` for UNets
  (kohya sd-scripts' diffusers-UNet names, which diffusers and ComfyUI map back), `lora_transformer_` for
  MMDiT / DiT transformers (OneTrainer / ComfyUI names; diffusers maps them back for FLUX only).

The LoRA scale alpha / rank is baked into lora_B and alpha is written as the rank, so every loader — with or
without adapter metadata, diffusers or ComfyUI — applies exactly the trained update.

`load_lora_strict` loads an export into a pipeline and fails listing every exported tensor that did not
arrive in the network (diffusers only *warns* for unexpected keys and silently skips keys with another
prefix), by matching tensor values rather than trusting key names.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .families import ExportFamily, network_of, pipeline_class

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHT_NAME = "lora_kohya.safetensors"


class LoraLoadError(RuntimeError):
    """Exported LoRA tensors that did not load into the network (or loaded with a wrong scale)."""


def lora_layers(model: nn.Module) -> dict[str, Any]:
    """module name -> peft LoraLayer, for the model's single adapter."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def adapter_name_of(model: nn.Module) -> str:
    names = {a for layer in lora_layers(model).values() for a in layer.lora_A.keys()}
    if len(names) != 1:
        raise ValueError(f"expected one LoRA adapter on {type(model).__name__}, found {sorted(names) or 'none'}")
    return names.pop()


def is_lora_model(model: nn.Module) -> bool:
    return bool(lora_layers(model))


def lora_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """`<module>.lora_A.weight` / `<module>.lora_B.weight` with alpha/rank baked into lora_B (scale 1)."""
    layers = lora_layers(model)
    adapter = adapter_name_of(model)
    out: dict[str, Tensor] = {}
    for name, layer in layers.items():
        if getattr(layer, "use_dora", {}).get(adapter, False):
            raise ValueError(f"{name}: DoRA adapters are not exportable as plain LoRA")
        a = layer.lora_A[adapter].weight.detach()
        b = layer.lora_B[adapter].weight.detach() * float(layer.scaling[adapter])
        if getattr(layer.lora_B[adapter], "bias", None) is not None:
            raise ValueError(f"{name}: LoRA with bias is not supported by the export formats")
        out[f"{name}.lora_A.weight"] = a.to(dtype or a.dtype).contiguous().cpu()
        out[f"{name}.lora_B.weight"] = b.to(dtype or b.dtype).contiguous().cpu()
    if not out:
        raise ValueError(f"{type(model).__name__} has no LoRA layers")
    return out


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The network's plain state dict with every LoRA update added into its base weight (W + B A scale)."""
    layers = lora_layers(model)
    adapter = adapter_name_of(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    for name, layer in layers.items():
        delta = layer.get_delta_weight(adapter).detach()
        state[f"{name}.base_layer.weight"] = (state[f"{name}.base_layer.weight"]
                                              + delta.to(state[f"{name}.base_layer.weight"]))
    return {k.replace(".base_layer.", "."): v for k, v in state.items()}


def to_kohya(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """diffusers/peft LoRA keys (no network prefix) -> kohya names (see module docstring for the rules)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        module, kind = key.rsplit(".lora_", 1)
        name = prefix + module.replace(".", "_")
        if kind == "A.weight":
            out[f"{name}.lora_down.weight"] = value
            out[f"{name}.alpha"] = torch.tensor(float(value.shape[0]), dtype=value.dtype)  # alpha = rank: scale 1
        elif kind == "B.weight":
            out[f"{name}.lora_up.weight"] = value
        else:
            raise ValueError(f"unexpected LoRA key {key}")
    return out


def from_kohya(state: dict[str, Tensor], prefix: str, network: nn.Module) -> dict[str, Tensor]:
    """Inverse of to_kohya for a given network (module names resolve the '_' ambiguity). Used where diffusers
    has no converter for the prefix (SD3, SANA): the result loads with load_lora_weights."""
    names = {prefix + name.replace(".", "_"): name for name, _ in network.named_modules() if name}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        stem, kind = key.split(".", 1)
        if kind == "alpha":
            continue
        if stem not in names:
            raise LoraLoadError(f"kohya key {key} names no module of {type(network).__name__}")
        alpha = state.get(f"{stem}.alpha")
        rank = state[f"{stem}.lora_down.weight"].shape[0]
        scale = 1.0 if alpha is None else float(alpha) / rank
        if kind == "lora_down.weight":
            out[f"{names[stem]}.lora_A.weight"] = value
        elif kind == "lora_up.weight":
            out[f"{names[stem]}.lora_B.weight"] = value * scale if scale != 1.0 else value
        else:
            raise LoraLoadError(f"unexpected kohya key {key}")
    return out


def save_lora(directory: str | Path, family: ExportFamily, state: dict[str, Tensor]) -> Path:
    """Write with the pipeline class's own writer (diffusers decides the key names and the file name)."""
    if not family.loads_lora:
        raise ValueError(f"{family.pipeline_class} has no load_lora_weights; export this student with "
                         "--format full (the LoRA is fused into the network)")
    cls = pipeline_class(family)
    cls.save_lora_weights(str(directory), **{f"{family.network}_lora_layers": state}, weight_name=LORA_WEIGHT_NAME,
                          safe_serialization=True)
    return Path(directory) / LORA_WEIGHT_NAME


def save_kohya(directory: str | Path, family: ExportFamily, state: dict[str, Tensor]) -> Path:
    from safetensors.torch import save_file

    if family.kohya_prefix is None:
        raise ValueError(f"no kohya naming for {family.pipeline_class} networks; use --format full")
    path = Path(directory) / KOHYA_WEIGHT_NAME
    Path(directory).mkdir(parents=True, exist_ok=True)
    save_file(to_kohya(state, family.kohya_prefix), str(path), metadata={"format": "pt"})
    return path


def add_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Merge string metadata into a safetensors file's header (tensors unchanged)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        old = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    save_file(tensors, str(tmp), metadata={**old, **{k: str(v) for k, v in metadata.items()}})
    os.replace(tmp, path)


# ---------------- loading, strictly ----------------
@contextlib.contextmanager
def captured_warnings(logger_name: str = "diffusers") -> Iterator[list[str]]:
    """Collect WARNING+ messages of a library logger (diffusers reports skipped LoRA keys only this way)."""
    messages: list[str] = []

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Handler(level=logging.WARNING)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _fingerprint(t: Tensor) -> tuple:
    t = t.detach().float().contiguous().cpu()
    return tuple(t.shape), hashlib.sha1(t.numpy().tobytes()).hexdigest()


_KEY_WARNINGS = ("unexpected keys", "missing keys", "No LoRA keys", "not been correctly renamed")


def load_lora_strict(pipe: Any, family: ExportFamily, path: str | Path, adapter_name: str = "fewstep",
                     weight_name: str | None = None) -> dict[str, Any]:
    """`pipe.load_lora_weights(path)`, then check every exported LoRA tensor arrived in the network with
    scale 1 (the export bakes alpha/rank). Raises LoraLoadError naming each unmatched key; returns a report."""
    from safetensors.torch import load_file

    path = Path(path)
    file = path / (weight_name or _weight_file(path)) if path.is_dir() else path
    raw = load_file(str(file))
    network = network_of(pipe, family)
    is_kohya = any(k.endswith(".lora_down.weight") for k in raw)
    if is_kohya and not family.kohya_reimport and family.kohya_prefix:
        # diffusers has no converter for these names: map them back ourselves, then load the result
        source: Any = {f"{family.network}.{k}": v for k, v in from_kohya(raw, family.kohya_prefix, network).items()}
        exported = source
    else:
        source = str(file)
        exported = {k: v for k, v in raw.items() if not k.endswith(".alpha")}
    with captured_warnings() as warnings:
        if isinstance(source, dict):
            pipe.load_lora_weights(dict(source), adapter_name=adapter_name)
        else:
            pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=adapter_name)
    layers = {n: m for n, m in lora_layers(network).items() if adapter_name in m.lora_A}
    dtype = network.dtype
    loaded = Counter()
    for layer in layers.values():
        loaded[_fingerprint(layer.lora_A[adapter_name].weight)] += 1
        loaded[_fingerprint(layer.lora_B[adapter_name].weight)] += 1
    unmatched = []
    for key in sorted(exported):
        fp = _fingerprint(exported[key].to(dtype))
        if loaded[fp] > 0:
            loaded[fp] -= 1
        else:
            unmatched.append(key)
    extra = sum(loaded.values())  # adapter tensors the file did not provide (left at their init)
    bad_scale = sorted(n for n, m in layers.items() if float(m.scaling[adapter_name]) != 1.0)
    # "No LoRA keys associated to CLIPTextModel" is expected (the export has no text-encoder LoRA)
    key_warnings = [w for w in warnings if any(s in w for s in _KEY_WARNINGS)
                    and ("No LoRA keys" not in w or type(network).__name__ in w)]
    if unmatched or extra or bad_scale or key_warnings:
        problems = []
        if unmatched:
            problems.append(f"{len(unmatched)} of {len(exported)} exported LoRA tensors did not load into "
                            f"{type(network).__name__}: {', '.join(unmatched[:20])}"
                            f"{' ...' if len(unmatched) > 20 else ''}")
        if extra:
            problems.append(f"{extra} adapter tensors in the network were not in the file (left at initialisation)")
        if bad_scale:
            problems.append(f"LoRA scale != 1 on {bad_scale[:5]} (the export bakes alpha/rank; alpha was misread)")
        problems += [f"diffusers warned: {w}" for w in key_warnings]
        with contextlib.suppress(Exception):
            pipe.delete_adapters(adapter_name)
        raise LoraLoadError(f"LoRA {file} did not load cleanly into {type(pipe).__name__}:\n  " + "\n  ".join(problems))
    return {"file": file.name, "converted_by": "fewstep" if isinstance(source, dict) else "diffusers",
            "tensors": len(exported), "modules": len(layers), "adapter_name": adapter_name}


def _weight_file(directory: Path) -> str:
    for name in (LORA_WEIGHT_NAME, KOHYA_WEIGHT_NAME):
        if (directory / name).is_file():
            return name
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"no single LoRA .safetensors file in {directory} (found {files}); pass weight_name")
    return files[0]
