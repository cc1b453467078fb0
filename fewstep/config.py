"""Typed, validated run configuration: YAML recipe + `key=value` overrides.

Sections: run, model, student, objective, optimizers, data. A recipe may name a `base:` recipe (a path relative to
itself) and hold only what differs: sections merge key by key, anything else replaces. Objective and data sections are
validated by the model registered for their `name` / `kind`, so each family keeps its own
hyper-parameters next to its code. Every mistake becomes one ConfigError line naming the key
and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A configuration mistake, phrased as 'config error: <key>: <what> (<allowed>)'."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(StrictModel):
    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 1000
    log_every: int = 10
    sample_every: int = 0  # 0: only at the end
    sample_steps: list[int] = [1, 2, 4]
    num_samples: int = 16
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    max_grad_norm: float | None = 1.0
    ema_decay: float | None = None  # evaluation EMA of the student's trainable weights
    # stop when a generator's logged sample diversity (mean pairwise L2 per sqrt(dim)) passes this x its first
    # logged value, or x 1 (unit-variance data's spread) when that was smaller: samples spreading without bound
    # while the loss stays finite; None: off
    max_diversity_growth: float | None = 10.0
    trackers: list[Literal["tensorboard"]] = ["tensorboard"]
    find_unused_parameters: bool = False
    attention_backend: Literal["sdpa", "fewstep", "xformers"] = "sdpa"
    progress_bar: bool = True


class ToyConfig(StrictModel):
    dataset: Literal["ring", "image"] = "ring"
    num_modes: int = 8
    std: float = 0.08
    radius: float = 2.0
    shape: list[int] = [1, 8, 8]
    num_classes: int = 0
    path: Literal["flow", "vp", "edm", "trigflow"] = "flow"
    hidden: int = 128
    depth: int = 3
    # the toy student: its MLP correction's units (sCM trains best on flow_prediction) and time features
    student_prediction: Literal["sample", "epsilon", "v_prediction", "flow_prediction"] = "sample"
    time_features: Literal["log_snr", "angle"] = "log_snr"


class ModelConfig(StrictModel):
    kind: Literal["toy_gmm", "unet2d", "unet2d_condition", "sd3", "flux", "sana", "dit"] = "toy_gmm"
    pretrained: str | None = None  # local folder or hub id
    subfolder: str | None = None
    tiny: bool = False  # build a tiny random-config model (tests, smoke runs)
    tiny_options: dict[str, Any] = {}  # passed to fewstep.models.tiny_denoiser (e.g. in_channels, num_classes)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    embedded_guidance: float | None = None  # guidance-distilled teachers (FLUX-dev): the guidance embedding value
    toy: ToyConfig = ToyConfig()


class LoraConfig(StrictModel):
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the family's attention projections


class StudentConfig(StrictModel):
    # "teacher", or a fewstep run directory (its latest checkpoint) / checkpoint folder whose student, and fake
    # score where both runs have one, start this run (SiD²A: SiDA started from a SiD run); optimisers start fresh
    init: str = "teacher"
    lora: LoraConfig | None = None


class OptimizerConfig(StrictModel):
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    warmup_steps: int = 0


class ToyDataConfig(StrictModel):
    kind: Literal["toy"] = "toy"
    batch_size: int = 256


class SyntheticDataConfig(StrictModel):
    """Random image tensors (smoke tests of real architectures without a dataset)."""

    kind: Literal["synthetic"] = "synthetic"
    batch_size: int = 4
    shape: list[int] = [3, 16, 16]
    num_classes: int = 0
    prompts: list[str] | None = None


class AnimalMNISTDataConfig(StrictModel):
    """The bundled task: real 28x28 Animal-MNIST silhouettes with class labels (fewstep.data.animal_mnist)."""

    kind: Literal["animal_mnist"] = "animal_mnist"
    batch_size: int = 64
    split: Literal["train", "test"] = "train"


class RootConfig(StrictModel):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    student: StudentConfig = StudentConfig()
    objective: dict[str, Any] = {"name": "cd"}
    optimizers: dict[str, OptimizerConfig] = {"student": OptimizerConfig()}
    data: dict[str, Any] = {"kind": "toy"}


class Config:
    """The validated configuration: typed sections plus the objective's and data's own models."""

    def __init__(self, root: RootConfig, objective: BaseModel, data: BaseModel):
        self.run, self.model, self.student, self.optimizers = root.run, root.model, root.student, root.optimizers
        self.objective, self.data = objective, data
        self._root = root

    def to_dict(self) -> dict[str, Any]:
        out = self._root.model_dump(mode="json")
        out["objective"] = self.objective.model_dump(mode="json")
        out["data"] = self.data.model_dump(mode="json")
        return out


# name -> pydantic model of that objective's section; filled by fewstep.objectives.registry
OBJECTIVE_CONFIGS: dict[str, type[BaseModel]] = {}
DATA_CONFIGS: dict[str, type[BaseModel]] = {"toy": ToyDataConfig, "synthetic": SyntheticDataConfig,
                                             "animal_mnist": AnimalMNISTDataConfig}


def _check_toy_pairing(config: Config) -> None:
    """A check across sections (run by build_config, so load_config applies it whatever was imported)."""
    is_toy_model, is_toy_data = config.model.kind == "toy_gmm", config.data.kind == "toy"
    if is_toy_model != is_toy_data:
        raise ConfigError(f"config error: data.kind: {config.data.kind!r} does not fit "
                          f"model.kind={config.model.kind!r}; the toy model trains on data.kind=toy and only it does")


def _format_errors(err: ValidationError, prefix: str, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(model, e["loc"][:-1])
            lines.append(f"config error: {loc}: unknown key; allowed keys: {', '.join(allowed)}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"config error: {loc}: {e['msg']}{shown}")
    return "\n".join(lines)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            break
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), annotation)
    return sorted(getattr(current, "model_fields", {}))


def _validate(model: type[BaseModel], raw: Any, prefix: str) -> BaseModel:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, prefix, model)) from None


def _pick(registry: dict[str, type[BaseModel]], raw: dict[str, Any], key: str, section: str) -> type[BaseModel]:
    value = raw.get(key)
    if value not in registry:
        raise ConfigError(f"config error: {section}.{key}: {value!r} is not known; "
                          f"allowed: {', '.join(sorted(registry))}")
    return registry[value]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (numbers, lists, null, ...)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config error: override {item!r} must look like key.subkey=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config error: {key}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return out


def build_config(raw: dict[str, Any]) -> Config:
    from .objectives import registry

    registry.register_all()
    from .data_sources import register_data_configs

    register_data_configs()
    root = _validate(RootConfig, raw, "")
    objective = _validate(_pick(OBJECTIVE_CONFIGS, root.objective, "name", "objective"), root.objective, "objective")
    data = _validate(_pick(DATA_CONFIGS, root.data, "kind", "data"), root.data, "data")
    config = Config(root, objective, data)
    _check_toy_pairing(config)
    return config


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file's mapping with its `base:` chain merged in (the file's own keys win)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: no config file at {path}; see configs/ for recipes")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config error: {path} must hold a mapping of sections (run, model, objective, ...)")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"config error: {path}: base must be a recipe path, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve(), base_path))
        raise ConfigError(f"config error: {path}: base recipes form a cycle ({chain}); remove one base: key")
    return _merged(read_recipe(base_path, (*_seen, path.resolve())), raw)


def _merged(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in own.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    raw = read_recipe(path) if path is not None else {}
    return build_config(apply_overrides(raw, overrides or []))
