"""`export_run`: a fewstep run directory -> a verified diffusers export (LoRA, kohya LoRA or full pipeline).

Every export is written into a hidden temporary folder, loaded back exactly as a user would load it
(fresh base pipeline + `load_lora_weights`, or `from_pretrained`), sampled for one step in the export
dtype, and only moved into place when
  - every exported LoRA tensor arrived in the network with scale 1 (lora.load_lora_strict),
  - the base pipeline used for the check has the run's teacher weights (sha256),
  - the output is finite, the decoded image is not constant (fp16 overflow / black images), and
  - the output differs from the base model's (a LoRA that does nothing is an error).
The result of these checks is stored in fewstep_export.json next to the scheduler and the call kwargs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import yaml
from torch import Tensor, nn

from .card import model_card
from .families import (FAMILIES, ExportFamily, decode, family_call_kwargs, family_of, generate, latent_size_multiple,
                       network_of, pipeline_class)
from .lora import (LORA_WEIGHT_NAME, add_metadata, is_lora_model, load_lora_strict, lora_state_dict,
                   merged_state_dict, save_kohya, save_lora)
from .schedulers import FewStepScheduler, scheduler_for

FORMATS = ("lora", "kohya", "full")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
INFO_NAME = "fewstep_export.json"
CHECK_PROMPTS = ("a photo of a cat", "a red car")


class ExportError(RuntimeError):
    """An export that would not load, or would not do what the student does; nothing was written."""


def fewstep_version() -> str:
    try:
        from importlib.metadata import version

        return version("fewstep")
    except Exception:  # noqa: BLE001  (not installed: read the source tree's pyproject)
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        for line in pyproject.read_text().splitlines() if pyproject.is_file() else []:
            if line.startswith("version"):
                return line.split("=", 1)[1].strip().strip('"') + "+src"
        return "unknown"


def network_sha256(module: nn.Module) -> str:
    """sha256 over the network's weights (sorted names, shapes, fp32 values); LoRA layers are ignored."""
    digest = hashlib.sha256()
    state = {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items() if ".lora_" not in k}
    for key in sorted(state):
        value = state[key].detach().float().contiguous().cpu()
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' info/warnings (progress of loading, dtype notes) and its torch_dtype deprecation."""
    import warnings

    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            yield
    finally:
        dlogging.set_verbosity(level)


def cast_module(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """module.to(dtype), keeping the library's declared fp32 modules (e.g. T5's `wo`) in fp32."""
    with _quiet_diffusers():
        module.to(dtype)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32 and keep:
        for name, sub in module.named_modules():
            if any(k in name.split(".") for k in keep):
                sub.to(torch.float32)
    return module


def cast_pipeline(pipe: Any, dtype: torch.dtype) -> Any:
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            cast_module(component, dtype)
    return pipe


def check_finite_weights(tensors: dict[str, Tensor], dtype: torch.dtype, what: str) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ExportError(f"{len(bad)} {what} tensors overflow in {dtype} (|w| > {torch.finfo(dtype).max:.0f}): "
                          f"{', '.join(bad[:10])}; export with --dtype bf16 or fp32")


# ---------------- the run side ----------------
@dataclass
class RunExport:
    """Everything about a run an export needs."""

    run_dir: Path
    config: Any
    setup: Any
    family: ExportFamily
    spec: FewStepScheduler
    checkpoint: str
    ema: bool

    @property
    def base_model(self) -> str:
        model = self.config.model
        return f"tiny:{self.family.name}" if model.tiny else str(model.pretrained)

    @property
    def embedded_guidance(self) -> float | None:
        return self.config.model.embedded_guidance if getattr(self.setup.teacher, "has_guidance", False) else None


def open_run(run_dir: str | Path, checkpoint: str = "latest", ema: bool = False,
             steps: Sequence[int] | None = None) -> RunExport:
    from ..config import build_config
    from ..runs import load_run
    from ..training.checkpoint import resolve_checkpoint

    run_dir = Path(run_dir)
    config = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    setup = load_run(run_dir, checkpoint, ema)
    family = family_of(setup.teacher)
    spec = scheduler_for(setup.objective, tuple(steps or config.run.sample_steps))
    if spec.method == type(setup.objective).__name__:
        spec.method = config.objective.name
    name = resolve_checkpoint(run_dir, checkpoint).name
    return RunExport(run_dir, config, setup, family, spec, name, ema)


def base_pipeline(family: ExportFamily, base_model: str, dtype: torch.dtype | None = None):
    """The base pipeline an export applies to: tiny:<family> (tests) or a pipeline folder / hub id."""
    if base_model.startswith("tiny:"):
        from ..models.tiny import tiny_pipeline

        pipe = tiny_pipeline(base_model.split(":", 1)[1])
        return pipe if dtype is None else cast_pipeline(pipe, dtype)
    from ..models.registry import _check_reachable

    _check_reachable(base_model)
    with _quiet_diffusers():
        return pipeline_class(family).from_pretrained(base_model, torch_dtype=dtype)


def _full_components(run: RunExport, network: nn.Module, scheduler: Any) -> dict[str, Any]:
    family, model = run.family, run.config.model
    if model.tiny:
        from ..models.tiny import tiny_pipeline_components

        components = tiny_pipeline_components(family.name)
    elif _is_pipeline_source(str(model.pretrained)):
        with _quiet_diffusers():
            pipe = pipeline_class(family).from_pretrained(str(model.pretrained), **{family.network: None})
        components = dict(pipe.components)
    elif family.text:
        raise ExportError(f"--format full needs the teacher's pipeline folder (text encoders, VAE, tokenizers); "
                          f"{model.pretrained!r} has no model_index.json")
    else:
        import inspect

        params = inspect.signature(pipeline_class(family).__init__).parameters
        components = {k: None for k in params if k != "self"}
    components[family.network] = network
    components["scheduler"] = scheduler
    return components


def _is_pipeline_source(pretrained: str) -> bool:
    folder = Path(pretrained)
    return (folder / "model_index.json").is_file() if folder.exists() else "/" in pretrained


# ---------------- export ----------------
def export_run(run_dir: str | Path, fmt: str = "lora", out: str | Path | None = None, *, checkpoint: str = "latest",
               ema: bool = False, fuse: bool = False, dtype: str = "fp32", steps: Sequence[int] | None = None,
               verify: bool = True, overwrite: bool = False) -> Path:
    """Export a run (see module docstring); returns the export folder."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    run = open_run(run_dir, checkpoint, ema, steps)
    out = Path(out) if out is not None else run.run_dir / f"export-{fmt}-{dtype}"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite or another --out")
    tmp = out.parent / f".{out.name}.tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        info = _write(run, fmt, tmp, DTYPES[dtype], dtype, fuse)
        if verify:
            info["verification"] = verify_export(tmp, run)
            (tmp / INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write(run: RunExport, fmt: str, folder: Path, torch_dtype: torch.dtype, dtype: str, fuse: bool) -> dict[str, Any]:
    family, spec, setup = run.family, run.spec, run.setup
    student_net, base_net = setup.student.model, setup.teacher.model
    lora = is_lora_model(student_net)
    call_kwargs = {"guidance_scale": spec.guidance_scale, **family_call_kwargs(family, run.embedded_guidance)}
    info: dict[str, Any] = {
        "format": fmt, "family": family.name, "pipeline_class": family.pipeline_class, "network": family.network,
        "method": spec.method, "base_model": run.base_model, "base_model_sha256": network_sha256(base_net),
        "fewstep_version": fewstep_version(), "run_dir": str(run.run_dir), "checkpoint": run.checkpoint,
        "ema": run.ema, "dtype": dtype, "scheduler": spec.to_dict(), "call_kwargs": call_kwargs,
        "recommended_steps": spec.recommended_steps, "guidance_distilled": spec.guidance_distilled,
        "fused": False, "lora_unfused": False, "weight_name": None, "sample_shape": list(_latent_shape(run)),
    }
    metadata = {"fewstep.format": fmt, "fewstep.method": spec.method,
                "fewstep.steps": ",".join(map(str, spec.recommended_steps)),
                "fewstep.schedules": json.dumps({str(k): v for k, v in spec.steps.items()}),
                "fewstep.scheduler": spec.class_name, "fewstep.guidance_scale": str(spec.guidance_scale),
                "fewstep.base_model": run.base_model, "fewstep.base_model_sha256": info["base_model_sha256"],
                "fewstep.version": info["fewstep_version"], "fewstep.dtype": dtype}
    if fmt in ("lora", "kohya"):
        if not lora:
            raise ExportError("this student was fully fine-tuned (no LoRA layers): export it with --format full")
        if not family.loads_lora:
            raise ExportError(f"{family.pipeline_class} has no load_lora_weights: export this LoRA student with "
                              "--format full (the LoRA is fused into the network)")
        state = lora_state_dict(student_net, torch_dtype)
        check_finite_weights(state, torch_dtype, "LoRA")
        rank = max(v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight"))
        info["lora_rank"] = rank
        if fmt == "lora":
            path = save_lora(folder, family, state)
        else:
            path = save_kohya(folder, family, state)
            metadata |= {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                         "ss_network_alpha": str(rank)}
        add_metadata(path, metadata)
        info["weight_name"] = path.name
        spec.build().save_pretrained(str(folder / "scheduler"))
    else:
        network = copy.deepcopy(base_net)
        if lora and (fuse or not family.loads_lora):
            network.load_state_dict(merged_state_dict(student_net), strict=True)
            info["fused"] = True
        elif lora:
            info["lora_unfused"] = True
        else:
            network.load_state_dict(student_net.state_dict(), strict=True)
        cast_module(network, torch_dtype)
        check_finite_weights(dict(network.state_dict()), torch_dtype, "network")
        components = _full_components(run, network, spec.build())
        pipe = pipeline_class(family)(**components)
        cast_pipeline(pipe, torch_dtype)
        with _quiet_diffusers():
            pipe.save_pretrained(str(folder), safe_serialization=True)
        for file in sorted((folder / family.network).glob("*.safetensors")):
            add_metadata(file, metadata)
        if info["lora_unfused"]:
            state = lora_state_dict(student_net, torch_dtype)
            check_finite_weights(state, torch_dtype, "LoRA")
            add_metadata(save_lora(folder, family, state), metadata)
            info["weight_name"] = LORA_WEIGHT_NAME
    unsafe = [p.name for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    if unsafe:
        raise ExportError(f"non-safetensors weight files were written: {unsafe}")
    (folder / INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True))
    absent = list(absent_components(folder)) if info["format"] == "full" else []
    (folder / "README.md").write_text(model_card(info, spec, family, run.run_dir, absent))
    return info


# ---------------- loading an export ----------------
@dataclass
class LoadedExport:
    """A loaded export: the diffusers pipeline, and what the export says about sampling it."""

    pipe: Any
    family: ExportFamily
    spec: FewStepScheduler
    info: dict[str, Any]
    path: Path
    lora_report: dict[str, Any] | None = None

    def call_kwargs(self, num_steps: int) -> dict[str, Any]:
        """kwargs for pipe(...) that reproduce the student at num_steps (timesteps/sigmas, guidance, ...)."""
        return {"num_inference_steps": num_steps, **self.spec.set_timesteps_kwargs(num_steps),
                **self.info["call_kwargs"]}

    def generate(self, num_steps: int, latents: Tensor, **kwargs: Any) -> Tensor:
        extra = {k: v for k, v in self.info["call_kwargs"].items() if k != "guidance_scale"}
        kwargs.setdefault("guidance_scale", self.info["call_kwargs"].get("guidance_scale"))
        if self.family.text:
            kwargs = {**extra, **kwargs}
        return generate(self.pipe, self.family, self.spec, num_steps, latents, **kwargs)


def read_info(path: str | Path) -> dict[str, Any]:
    file = Path(path) / INFO_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a fewstep export (no {INFO_NAME}); export a run with `fewstep export`")
    return json.loads(file.read_text())


def load_export(path: str | Path, base: Any = None, dtype: str | torch.dtype | None = None,
                check_base: bool = False) -> LoadedExport:
    """Load an export the way its model card says, strictly (LoRA keys checked).

    base: for LoRA exports, a base pipeline object or a pipeline folder / hub id (default: the export's
    base_model). check_base compares the base network's sha256 with the one the LoRA was trained on.
    """
    path = Path(path)
    info = read_info(path)
    family = FAMILIES[info["family"]]
    spec = FewStepScheduler.from_dict(info["scheduler"])
    torch_dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    torch_dtype = torch_dtype or DTYPES[info["dtype"]]
    report = None
    if info["format"] == "full":
        from .. import schedulers  # noqa: F401  (diffusers loads a model_index.json's fewstep.schedulers only once imported)

        with _quiet_diffusers():
            pipe = pipeline_class(family).from_pretrained(str(path), torch_dtype=torch_dtype, **absent_components(path))
        if info.get("lora_unfused"):
            report = load_lora_strict(pipe, family, path, weight_name=info["weight_name"])
    else:
        pipe = base if base is not None and not isinstance(base, (str, Path)) else base_pipeline(
            family, str(base or info["base_model"]))
        if check_base:
            _check_base(pipe, family, info)
        cast_pipeline(pipe, torch_dtype)
        pipe.scheduler = spec.build()
        report = load_lora_strict(pipe, family, path, weight_name=info["weight_name"])
    return LoadedExport(pipe, family, spec, info, path, report)


def absent_components(folder: Path) -> dict[str, None]:
    """Components a full export saved as null (the bundled pixel-space DiT has no VAE): diffusers' from_pretrained
    refuses to load the folder unless they are passed as None explicitly."""
    index = json.loads((folder / "model_index.json").read_text())
    return {k: None for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is None}


def _check_base(pipe: Any, family: ExportFamily, info: dict[str, Any]) -> None:
    got = network_sha256(network_of(pipe, family))
    if got != info["base_model_sha256"]:
        raise ExportError(f"the base pipeline's {family.network} is not the network this LoRA was distilled from "
                          f"({info['base_model']}: sha256 {info['base_model_sha256'][:12]}..., got {got[:12]}...); "
                          "a LoRA on another fine-tune or dtype needs a lower lora_scale "
                          "and will not match the student")


# ---------------- verification ----------------
def check_inputs(run: RunExport, batch: int = 2, seed: int = 0, multiple: int = 1) -> dict[str, Any]:
    """Fixed noise and conditioning for the export's own round-trip check."""
    c, h, w = _latent_shape(run)
    shape = (c, -(-h // multiple) * multiple, -(-w // multiple) * multiple)
    noise = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))
    if run.family.text:
        return {"latents": noise, "prompts": list(CHECK_PROMPTS[:batch])}
    n = getattr(run.setup.teacher, "num_classes", None)
    labels = torch.arange(batch) % n if n else None
    return {"latents": noise, "class_labels": labels}


def _latent_shape(run: RunExport) -> tuple[int, ...]:
    with contextlib.suppress(Exception):
        return tuple(run.setup.data.sample_shape())
    cfg = run.setup.teacher.model.config
    channels = cfg.in_channels // 4 if run.family.name == "flux" else cfg.in_channels
    size = min(int(getattr(cfg, "sample_size", None) or 64), 64)
    return (channels, size, size)


@torch.no_grad()
def verify_export(folder: Path, run: RunExport) -> dict[str, Any]:
    """Load the written export as a user would and check it (see module docstring)."""
    info = read_info(folder)
    family = run.family
    base = None
    if info["format"] != "full":
        base = base_pipeline(family, run.base_model)
        _check_base(base, family, info)
    loaded = load_export(folder, base=base)
    loaded.pipe.set_progress_bar_config(disable=True)
    inputs = check_inputs(run, multiple=latent_size_multiple(loaded.pipe, family))
    generator = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    with _quiet_diffusers():  # LCMScheduler warns for any custom schedule not starting at 999
        out = loaded.generate(1, inputs["latents"], prompts=inputs.get("prompts"),
                              class_labels=inputs.get("class_labels"), generator=generator())
    with _swapped_base(loaded, run), _quiet_diffusers():
        out_base = loaded.generate(1, inputs["latents"], prompts=inputs.get("prompts"),
                                   class_labels=inputs.get("class_labels"), generator=generator())
    image = decode(loaded.pipe, out)
    dtype = info["dtype"]
    if not torch.isfinite(out).all() or not torch.isfinite(image).all():
        raise ExportError(f"the exported {dtype} pipeline produces non-finite values (overflow); export with "
                          "--dtype bf16 or fp32")
    image_std = float(image.float().std(dim=(1, 2, 3)).min())
    if image_std < 1e-3:
        raise ExportError(f"the exported {dtype} pipeline renders a constant image (std {image_std:.2e}); "
                          "check the VAE dtype or export with --dtype fp32")
    diff = float((out.float() - out_base.float()).abs().max())
    if diff == 0.0:
        raise ExportError("the exported model's output equals the base model's: the distilled weights had no "
                          "effect (an untrained LoRA, or weights that did not load)")
    return {"lora_load": loaded.lora_report, "dtype": dtype, "steps_checked": 1, "finite": True,
            "min_image_std": image_std, "max_abs_diff_vs_base": diff,
            "base_sha256_checked": info["format"] != "full"}


@contextlib.contextmanager
def _swapped_base(loaded: LoadedExport, run: RunExport) -> Iterator[None]:
    """Temporarily the base model: LoRA adapters disabled, or the teacher's network in place."""
    pipe, family = loaded.pipe, loaded.family
    if loaded.lora_report is not None:
        pipe.disable_lora()
        try:
            yield
        finally:
            pipe.enable_lora()
        return
    original = network_of(pipe, family)
    base = cast_module(copy.deepcopy(run.setup.teacher.model), original.dtype)
    setattr(pipe, family.network, base)
    try:
        yield
    finally:
        setattr(pipe, family.network, original)
