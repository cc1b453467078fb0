"""Config -> teacher, student, objective and batch source (the only place that wires them)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config, ConfigError, ModelConfig, StudentConfig, ToyConfig
from .diffusion import EDMPath, FlowPath, GaussianPath, TrigFlowPath, VPPath
from .models.base import Denoiser
from .objectives.base import Objective
from .objectives.registry import build_objective
from .toy import GaussianMixture, GaussianMixtureDenoiser, ToyStudent, image_mixture, ring_mixture

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Setup:
    teacher: Denoiser
    student: Denoiser
    objective: Objective
    data: object  # a fewstep.training.trainer.BatchSource
    text_encoder: object | None = None  # prompts -> cond (frozen, cached), for text-conditional families


TEXT_FAMILIES = {"unet2d_condition": "sd15", "sd3": "sd3", "flux": "flux", "sana": "sana"}


def build_text_encoder(cfg: ModelConfig, teacher: Denoiser):
    """The frozen text conditioner of a text-conditional teacher (None for class/unconditional models).

    Also stores its empty-prompt embeddings on the teacher for classifier-free guidance.
    """
    if cfg.kind not in TEXT_FAMILIES:
        return None
    from .models import encoders, tiny

    family = "sdxl" if getattr(teacher, "is_sdxl", False) else TEXT_FAMILIES[cfg.kind]
    if cfg.tiny:
        conditioner = encoders.build_conditioner(family, **tiny.tiny_pipeline_components(family))
    else:
        conditioner = encoders.CONDITIONERS[family].from_pretrained(cfg.pretrained, dtype=DTYPES[cfg.dtype])
    teacher.set_null_cond(conditioner.null_cond())  # type: ignore[attr-defined]
    if getattr(teacher, "has_guidance", False):
        if cfg.embedded_guidance is None:
            raise ConfigError("config error: model.embedded_guidance: required for a guidance-distilled teacher "
                              "(FLUX-dev style guidance embedding), e.g. model.embedded_guidance=3.5")
        return WithEmbeddedGuidance(conditioner, cfg.embedded_guidance)
    return conditioner


class WithEmbeddedGuidance:
    """Adds the per-sample guidance embedding value (FLUX-dev) to every encoded conditioning."""

    def __init__(self, conditioner, value: float):
        self.conditioner, self.value = conditioner, value

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        cond = dict(self.conditioner(prompts))
        cond["guidance"] = torch.full((len(prompts),), self.value)
        return cond

    def null_cond(self) -> dict[str, torch.Tensor]:
        return self.conditioner.null_cond()


def toy_path(name: str) -> GaussianPath:
    return {"flow": FlowPath, "vp": VPPath.from_scheduler_config, "edm": EDMPath, "trigflow": TrigFlowPath}[name]()


def toy_mixture(cfg: ToyConfig) -> GaussianMixture:
    if cfg.dataset == "ring":
        return ring_mixture(cfg.num_modes, cfg.radius, cfg.std, cfg.num_classes)
    return image_mixture(cfg.num_modes, tuple(cfg.shape), cfg.std, num_classes=cfg.num_classes)


def build_teacher(cfg: ModelConfig) -> Denoiser:
    if cfg.kind == "toy_gmm":
        return GaussianMixtureDenoiser(toy_mixture(cfg.toy), toy_path(cfg.toy.path))
    from . import models

    if cfg.tiny:
        denoiser, _ = models.tiny_denoiser(cfg.kind, **cfg.tiny_options)
        return denoiser
    if cfg.pretrained is None:
        raise ConfigError(f"config error: model.pretrained: required for model.kind={cfg.kind!r} "
                          "(a local diffusers folder or hub id), or set model.tiny=true for a random tiny model")
    return models.load_denoiser(cfg.kind, cfg.pretrained, subfolder=cfg.subfolder, dtype=DTYPES[cfg.dtype])


def build_student(teacher: Denoiser, cfg: StudentConfig, model_cfg: ModelConfig) -> Denoiser:
    """The student starts as the teacher (toy: exact posterior mean + zero-initialised correction)."""
    if isinstance(teacher, GaussianMixtureDenoiser):
        if cfg.lora is not None:
            raise ConfigError("config error: student.lora: LoRA needs a diffusers model; the toy student is an MLP")
        toy = model_cfg.toy
        return ToyStudent(teacher, hidden=toy.hidden, depth=toy.depth, prediction_type=toy.student_prediction,
                          time_features=toy.time_features)
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    if cfg.lora is not None:
        from .models import add_lora

        add_lora(student, rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                 target_modules=cfg.lora.target_modules)
    return student


def initialise_from_run(objective: Objective, source: str) -> None:
    """student.init: load the student (and the fake score, where the source run has one) from a fewstep run
    directory's latest checkpoint or a checkpoint folder. A network may lack only its discriminator head (a
    SiDA run started from SiD) or, for a student, the frozen teacher inside it (Phased DMD's mixture). The source's
    objective state goes to the objective's after_student_init hook (sCM resumes its tangent warm-up from it)."""
    from safetensors.torch import load_file

    from .training.checkpoint import network_weights, resolve_checkpoint

    path = Path(source)
    if not path.exists():
        raise ConfigError(f"config error: student.init: {source} does not exist; give 'teacher', a fewstep run "
                          "directory or one of its checkpoints/step-* folders")
    checkpoint = path if (path / "trainer_state.json").is_file() else resolve_checkpoint(path, "latest")
    networks = objective.trainable_networks()
    weights = network_weights(checkpoint, list(networks))
    if "student" not in weights:
        raise ConfigError(f"config error: student.init: {checkpoint} holds no student weights")
    for name, state in weights.items():
        if name not in networks:
            continue
        missing, unexpected = networks[name].load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(("head.", "teacher."))]
        unexpected = [k for k in unexpected if not k.startswith("head.")]
        if missing or unexpected:
            raise ConfigError(f"config error: student.init: the {name} in {checkpoint} does not fit this recipe's "
                              f"{name} (missing {missing[:3]}, unexpected {unexpected[:3]}); start from a run of "
                              "the same model and fake-score layout")
    state_file = checkpoint / "objective_state.safetensors"
    objective.after_student_init(load_file(str(state_file)) if state_file.is_file() else {})


def build_data(config: Config, teacher: Denoiser, device: torch.device, rank: int = 0, world_size: int = 1,
               text_encoder: object | None = None):
    from .data_sources import LoaderSource, SyntheticSource, ToySource, build_loader

    kind = config.data.kind
    if kind == "toy":
        return ToySource(teacher.mixture, config.data, device)  # type: ignore[attr-defined]
    if kind == "synthetic":
        return SyntheticSource(config.data, text_encoder, device)
    return LoaderSource(build_loader(config.data, rank, world_size, config.run.seed), text_encoder, device)


def build_setup(config: Config, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                initialise: bool = True) -> Setup:
    """initialise=False skips student.init: for callers that load a checkpoint of this run over it anyway (resume,
    load_run), so a run started from another run keeps working after that run is deleted."""
    from accelerate.utils import set_seed

    set_seed(config.run.seed)  # same seed on every rank: identical initial weights everywhere
    teacher = build_teacher(config.model)
    text_encoder = build_text_encoder(config.model, teacher)  # before the copy: the student shares the null cond
    student = build_student(teacher, config.student, config.model)
    apply_attention_backend(config.run.attention_backend, teacher, student)
    if config.run.gradient_checkpointing and hasattr(student, "enable_gradient_checkpointing"):
        student.enable_gradient_checkpointing()
    objective = build_objective(config.objective, student, teacher)
    if initialise and config.student.init != "teacher":
        initialise_from_run(objective, config.student.init)
    data = build_data(config, teacher, torch.device(device), rank, world_size, text_encoder)
    return Setup(teacher, student, objective, data, text_encoder)


def apply_attention_backend(backend: str, *denoisers: Denoiser) -> None:
    """run.attention_backend for every diffusers network of the recipe (teacher, student, ...)."""
    if backend == "sdpa":
        return
    networks = [d.model for d in denoisers if hasattr(d, "model")]
    if not networks:
        raise ConfigError(f"config error: run.attention_backend: {backend!r} applies to diffusers models; "
                          "this model has no attention (use 'sdpa')")
    from .kernels import set_attention_backend

    for network in networks:
        set_attention_backend(network, backend)

