"""Which Gaussian path and parameterisation a teacher was trained with, read from its scheduler config.

A diffusers checkpoint ships `scheduler/scheduler_config.json`; that file (not the model class) says
whether the network is a DDPM-family eps/v model or a flow-matching velocity model. Reading it here
means a SD 1.5 v-prediction fine-tune or a SANA DPM-Solver-with-flow-sigmas config is declared right
without per-checkpoint special cases.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from ..diffusion import PREDICTION_TYPES, FlowPath, GaussianPath, VPPath

# Schedulers whose training process is the discrete DDPM (VP) chain given by beta_* / trained_betas.
VP_SCHEDULERS = frozenset({
    "DDPMScheduler", "DDIMScheduler", "DDIMParallelScheduler", "DDPMParallelScheduler", "PNDMScheduler",
    "LMSDiscreteScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
    "LCMScheduler", "TCDScheduler", "SASolverScheduler",
})


def path_from_scheduler_config(config: Mapping[str, Any] | Any) -> tuple[GaussianPath, str]:
    """(path, prediction_type) for a scheduler config dict (as in scheduler_config.json) or a scheduler.

    Flow matching: any FlowMatch* scheduler, or a DPM-Solver/UniPC with use_flow_sigmas (SANA) ->
    FlowPath with 'flow_prediction'. DDPM family -> VPPath with the config's prediction_type.
    """
    if hasattr(config, "config") and not isinstance(config, Mapping):  # a scheduler instance
        config = {**config.config, "_class_name": type(config).__name__}
    cfg = dict(config)
    name = str(cfg.get("_class_name", ""))
    prediction_type = cfg.get("prediction_type")
    if name.startswith("FlowMatch") or cfg.get("use_flow_sigmas") or prediction_type == "flow_prediction":
        if prediction_type not in (None, "flow_prediction"):
            raise ValueError(f"{name} config with use_flow_sigmas has prediction_type={prediction_type!r}; "
                             "flow-matching teachers must predict 'flow_prediction'")
        return FlowPath(num_train_timesteps=int(cfg.get("num_train_timesteps", 1000))), "flow_prediction"
    if name in VP_SCHEDULERS or (not name and ("beta_schedule" in cfg or "trained_betas" in cfg)):
        prediction_type = prediction_type or "epsilon"
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"scheduler prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
        return _vp_path(cfg), prediction_type
    raise ValueError(
        f"cannot tell the training path from scheduler {name or '<no _class_name>'!r}; supported: FlowMatch* "
        f"schedulers, schedulers with use_flow_sigmas, and the DDPM family {sorted(VP_SCHEDULERS)}. "
        "Pass path=... and prediction_type=... explicitly to build_denoiser/load_denoiser.")


def _vp_path(cfg: Mapping[str, Any]) -> VPPath:
    """VPPath on diffusers' own DDPMScheduler alphas_cumprod for this config.

    The config is filtered by DDPMScheduler's real signature (inspect follows the register_to_config
    wrapper; `__init__.__code__.co_varnames` would only see the wrapper's *args/**kwargs).
    """
    from diffusers import DDPMScheduler

    accepted = inspect.signature(DDPMScheduler.__init__).parameters
    sched = DDPMScheduler(**{k: v for k, v in cfg.items() if k in accepted and k != "self"})
    return VPPath(sched.alphas_cumprod, dict(sched.config))
