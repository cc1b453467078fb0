"""Objective name -> (config model, builder). Each family registers itself here."""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import BaseModel

from ..config import OBJECTIVE_CONFIGS
from ..models.base import Denoiser
from .base import Objective
from .consistency import ConsistencyDistillation, ConsistencyTeacherConfig

Builder = Callable[[BaseModel, Denoiser, Denoiser], Objective]
BUILDERS: dict[str, Builder] = {}


def register(name: str, config: type[BaseModel], builder: Builder) -> None:
    OBJECTIVE_CONFIGS[name] = config
    BUILDERS[name] = builder


class CDConfig(ConsistencyTeacherConfig):
    """Consistency distillation / LCM (fewstep.objectives.consistency)."""

    name: Literal["cd"] = "cd"
    sigma_data: float = 0.5
    timestep_scaling: float = 10.0


def _build_cd(cfg: CDConfig, student: Denoiser, teacher: Denoiser) -> Objective:
    return ConsistencyDistillation(
        student, teacher, num_timesteps=cfg.num_timesteps, solver=cfg.solver, target_ema_decay=cfg.target_ema_decay,
        loss=cfg.loss, huber_c=cfg.huber_c, guidance_scale=cfg.guidance_scale, guidance_range=cfg.guidance_range,
        sigma_data=cfg.sigma_data, timestep_scaling=cfg.timestep_scaling, grid=cfg.grid,
        schedule_kwargs=dict(cfg.schedule))


register("cd", CDConfig, _build_cd)


def build_objective(cfg: BaseModel, student: Denoiser, teacher: Denoiser) -> Objective:
    register_all()
    name = getattr(cfg, "name")
    if name not in BUILDERS:
        raise ValueError(f"unknown objective {name!r}; available: {sorted(BUILDERS)}")
    return BUILDERS[name](cfg, student, teacher)


FAMILY_MODULES = ("adversarial", "dmd", "dmd_decoupled", "dmd_phased", "multistep_cm", "regularized_cm", "scm", "sid",
                  "vsd")


def register_all() -> None:
    """Import every objective family; each registers its configs and builders on import.
    (Lazy: the family modules import `register` from here.)"""
    import importlib

    for module in FAMILY_MODULES:
        importlib.import_module(f"{__package__}.{module}")
