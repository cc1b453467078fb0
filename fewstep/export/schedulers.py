"""The few-step scheduler shipped with every export: which diffusers scheduler, its config, and the exact
timesteps / sigmas per step count, so a diffusers pipeline visits the same times as the student's sampler.

Objectives plug in through one optional method:

    objective.export_scheduler(steps: Sequence[int]) -> FewStepScheduler   (or a dict with its fields)

When an objective has none, `default_export_scheduler` covers every "jump to x0, re-noise to the next time"
sampler that exposes `sampling_grid(num_steps)` or `sampling_times(num_steps)` (CD/LCM with an optional
`boundary`, and DMD / SiD / adversarial students that re-noise):

| student path | diffusers scheduler                                   | per-step schedule        |
|--------------|-------------------------------------------------------|--------------------------|
| VP (DDPM)    | LCMScheduler (c_skip/c_out = the student's boundary)  | set_timesteps(timesteps=[...]) (integers) |
| flow         | FlowMatchEulerDiscreteScheduler(stochastic_sampling)  | set_timesteps(sigmas=[...]), shift 1      |
| otherwise    | fewstep.schedulers.FewStepConsistencyScheduler        | timesteps (VP, may be non-integer) / sigmas |

"Otherwise" is every sampler the stock classes cannot visit exactly: TCD's 0 < gamma < 1, deterministic VP
jumps (gamma = 0), non-integer VP timesteps, a VP grid at timestep 0 without a boundary condition; the export
notes say why the stock class was not used.

LCMScheduler hard-codes sigma_data = 0.5, so another sigma_data is folded into timestep_scaling
(c_skip and c_out only depend on timestep_scaling * t / sigma_data). Without a boundary condition the
student's x0 is used as is: timestep_scaling = 1e6 makes c_skip < 1e-12 for every t >= 1.
On the flow path diffusers has no scheduler with a boundary condition: FlowMatchEulerDiscreteScheduler uses
x0 = x - sigma v, i.e. c_skip = 0, c_out = 1. The LCM-style c_skip there is 0.25 / ((1e4 sigma)^2 + 0.25):
~1e-9 at sigma = 1 (1-step sampling is exact) but 2.5e-3 at sigma = 0.001, the last point of a CD flow grid.
`max_boundary_error` records max(c_skip, 1 - c_out) over the exported grids (the relative size of the term
the diffusers scheduler leaves out); above 1e-2 the export is refused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..diffusion import FlowPath, VPPath, lcm_boundary_scalings

DEFAULT_STEPS = (1, 2, 4)
MAX_BOUNDARY_ERROR = 1e-2
# the only modules an export's scheduler class may come from (an export folder never names code to import)
SCHEDULER_LIBRARIES = ("diffusers", "fewstep.schedulers")


class SchedulerExportError(ValueError):
    """The student's sampler cannot be expressed as a diffusers scheduler."""


@dataclass
class FewStepScheduler:
    """What an export ships about sampling (serialised into fewstep_export.json and safetensors metadata).

    steps maps a step count to the kwargs of `scheduler.set_timesteps` (and of the pipeline call):
    {"timesteps": [...]} for discrete-time (VP) schedulers, {"sigmas": [...]} for flow matching.
    guidance_scale is the classifier-free guidance to use at inference (1.0: guidance is distilled in);
    guidance_distilled says whether a CFG > 1 on top would apply guidance twice; library is where class_name
    lives (one of SCHEDULER_LIBRARIES).
    """

    class_name: str
    config: dict[str, Any]
    steps: dict[int, dict[str, list[float]]]
    method: str
    guidance_scale: float = 1.0
    guidance_distilled: bool = False
    recommended_steps: list[int] = field(default_factory=list)
    max_boundary_error: float = 0.0
    notes: str = ""
    library: str = "diffusers"

    def __post_init__(self) -> None:
        self.steps = {int(k): {kk: [float(x) for x in vv] for kk, vv in v.items()} for k, v in self.steps.items()}
        if not self.recommended_steps:
            self.recommended_steps = sorted(self.steps)
        missing = [n for n in self.recommended_steps if n not in self.steps]
        if missing:
            raise SchedulerExportError(f"recommended steps {missing} have no timesteps/sigmas in the export")
        for n, kwargs in self.steps.items():
            if len(kwargs) != 1 or next(iter(kwargs)) not in ("timesteps", "sigmas"):
                raise SchedulerExportError(f"steps[{n}] must be {{'timesteps': [...]}} "
                                           f"or {{'sigmas': [...]}}; got {kwargs}")
            values = next(iter(kwargs.values()))
            if len(values) != n:
                raise SchedulerExportError(f"steps[{n}] has {len(values)} values, expected {n}")

    # ---- diffusers side ----
    def build(self):
        """The scheduler instance (a diffusers class, or fewstep's own for samplers diffusers lacks)."""
        import importlib

        if self.library not in SCHEDULER_LIBRARIES:
            raise SchedulerExportError(f"scheduler library {self.library!r} is not one of {SCHEDULER_LIBRARIES}")
        cls = getattr(importlib.import_module(self.library), self.class_name, None)
        if cls is None:
            raise SchedulerExportError(f"{self.library} has no scheduler class {self.class_name!r}")
        return cls.from_config(self.config)

    def set_timesteps_kwargs(self, num_steps: int) -> dict[str, list]:
        """kwargs for `scheduler.set_timesteps` / the pipeline call (timesteps as ints for diffusers' discrete
        schedulers; fewstep's own takes non-integer VP timesteps as they are)."""
        if num_steps not in self.steps:
            raise SchedulerExportError(f"this export has schedules for {sorted(self.steps)} steps, not {num_steps}; "
                                       "re-export with --steps including it")
        ((key, values),) = self.steps[num_steps].items()
        if key == "timesteps" and self.library == "diffusers":
            return {key: [int(round(v)) for v in values]}
        return {key: list(values)}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["steps"] = {str(k): v for k, v in self.steps.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FewStepScheduler":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def scheduler_for(objective: Any, steps: Sequence[int] = DEFAULT_STEPS) -> FewStepScheduler:
    """The objective's own `export_scheduler(steps)` hook, else the default for re-noising samplers."""
    hook = getattr(objective, "export_scheduler", None)
    spec = hook(steps) if callable(hook) else default_export_scheduler(objective, steps)
    if isinstance(spec, Mapping):
        spec = FewStepScheduler.from_dict(spec)
    if not isinstance(spec, FewStepScheduler):
        raise SchedulerExportError(f"{type(objective).__name__}.export_scheduler returned {type(spec).__name__}; "
                                   "expected a FewStepScheduler or a dict of its fields")
    return spec


def objective_method(objective: Any) -> str:
    return getattr(objective, "method_name", None) or type(objective).__name__


def default_export_scheduler(objective: Any, steps: Sequence[int] = DEFAULT_STEPS,
                             method: str | None = None, grid_fn: Any = None, gamma: float = 1.0,
                             time_axis: Any = None) -> FewStepScheduler:
    """Multistep x0 sampler: jump to x0 (with the objective's LCM `boundary` if any), then TCD-step to the next
    time of grid_fn(n) (gamma = 1: full re-noise; 0: deterministic DDIM jump; time_axis: the path on whose time
    gamma is measured). A stock diffusers scheduler when one reproduces it exactly, else FewStepConsistencyScheduler."""
    grid_fn = grid_fn or getattr(objective, "sampling_grid", None) or getattr(objective, "sampling_times", None)
    if not callable(grid_fn):
        raise SchedulerExportError(
            f"{type(objective).__name__} has no export_scheduler(steps) and no sampling_grid / sampling_times"
            "(num_steps); add an "
            "export_scheduler hook returning fewstep.export.FewStepScheduler (see fewstep/export/schedulers.py)")
    student = objective.student
    grids = {int(n): grid_fn(int(n)).detach().double().cpu() for n in steps}
    boundary = getattr(objective, "boundary", None)
    common = dict(method=method or objective_method(objective), guidance_scale=1.0,
                  guidance_distilled=_distilled_guidance(objective), recommended_steps=sorted(int(n) for n in steps))
    try:
        if isinstance(student.path, VPPath) and gamma == 1.0:
            return lcm_scheduler(student.path, student.prediction_type, grids, boundary, **common)
        if isinstance(student.path, FlowPath) and gamma in (0.0, 1.0):
            return flow_scheduler(student.path, student.prediction_type, grids, boundary, stochastic=gamma == 1.0,
                                  **common)
        reason = (f"no stock diffusers scheduler takes a {type(student.path).__name__} sampler with gamma = {gamma}")
    except SchedulerExportError as err:
        reason = str(err)
    return consistency_scheduler(student.path, student.prediction_type, grids, boundary, gamma, time_axis,
                                 reason=reason, **common)


def consistency_scheduler(path: Any, prediction_type: str, grids: Mapping[int, torch.Tensor], boundary: Any,
                          gamma: float, time_axis: Any = None, reason: str = "", **common: Any) -> FewStepScheduler:
    """fewstep.schedulers.FewStepConsistencyScheduler: the trainer's consistency sampler, exactly, at any gamma."""
    from ..schedulers import FewStepConsistencyScheduler

    if not isinstance(path, (VPPath, FlowPath)):
        raise SchedulerExportError(f"a {type(path).__name__} student has no diffusers pipeline to export to")
    key = "sigmas" if isinstance(path, FlowPath) else "timesteps"
    for n, grid in grids.items():
        if (grid <= path.t_min).any() or (grid > path.t_max).any():
            raise SchedulerExportError(f"the {n}-step times {grid.tolist()} must lie in ({path.t_min}, {path.t_max}]")
    t_b, scaling, sigma_data = _boundary_params(boundary)
    scheduler = FewStepConsistencyScheduler(
        path=_plain(path.config()), prediction_type=prediction_type, gamma=float(gamma),
        time_axis=_plain(time_axis.config()) if time_axis is not None else None,
        boundary_time=t_b if boundary is not None else None, sigma_data=sigma_data, timestep_scaling=scaling,
        num_train_timesteps=path.num_train_timesteps)
    notes = "fewstep's own scheduler (import fewstep.schedulers before DiffusionPipeline.from_pretrained)"
    notes += f": {reason}" if reason else ""
    if isinstance(path, VPPath) and 0 < gamma < 1:  # for UIs that only offer stock schedulers
        notes += (f". Closest stock scheduler: TCDScheduler with eta={gamma} (it floors the intermediate timestep and "
                  "returns a slightly noised sample at t = 0 instead of x0)")
    return FewStepScheduler("FewStepConsistencyScheduler", _plain(scheduler.config),
                            {n: {key: grid.tolist()} for n, grid in grids.items()}, library="fewstep.schedulers",
                            notes=notes, **common)


def _distilled_guidance(objective: Any) -> bool:
    scale = getattr(objective, "guidance_scale", 1.0)
    rng = getattr(objective, "guidance_range", None)
    return bool(rng is not None or (not torch.is_tensor(scale) and float(scale) != 1.0))


def _boundary_params(boundary: Any) -> tuple[float, float, float]:
    """(boundary_time, timestep_scaling, sigma_data); no boundary -> plain x0 (scaling 1e6)."""
    if boundary is None:
        return 0.0, 1e6, 0.5
    return float(boundary.boundary_time), float(boundary.timestep_scaling), float(boundary.sigma_data)


def lcm_scheduler(path: VPPath, prediction_type: str, grids: Mapping[int, torch.Tensor], boundary: Any,
                  **common: Any) -> FewStepScheduler:
    """LCMScheduler on the teacher's DDPM betas with the student's exact integer timesteps."""
    import inspect

    from diffusers import LCMScheduler

    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise SchedulerExportError(f"LCMScheduler cannot take prediction_type {prediction_type!r}")
    t_b, scaling, sigma_data = _boundary_params(boundary)
    if boundary is not None and abs(path.model_timestep(torch.tensor(t_b)).item()) > 0:
        raise SchedulerExportError(f"LCMScheduler's boundary condition is at timestep 0; the student's is at {t_b}")
    steps = {}
    for n, grid in grids.items():
        rounded = grid.round()
        if (not torch.allclose(grid, rounded, atol=1e-6) or (rounded < 0).any()
                or (rounded >= path.num_train_timesteps).any()):
            raise SchedulerExportError(f"the {n}-step grid {grid.tolist()} is not integer DDPM timesteps in "
                                       f"[0, {path.num_train_timesteps}); LCMScheduler cannot visit it")
        if boundary is None and (rounded == 0).any():
            raise SchedulerExportError(f"the {n}-step grid {grid.tolist()} visits timestep 0, where LCMScheduler "
                                       "forces c_skip = 1; a student without a boundary condition needs an "
                                       "export_scheduler hook there")
        steps[n] = {"timesteps": [int(v) for v in rounded.tolist()]}
    allowed = inspect.signature(LCMScheduler.__init__).parameters
    config = {k: v for k, v in path.scheduler_config.items() if k in allowed and k != "self" and not k.startswith("_")}
    config.update(prediction_type=prediction_type, clip_sample=False, thresholding=False,
                  timestep_scaling=scaling * 0.5 / sigma_data,  # LCMScheduler fixes sigma_data = 0.5
                  # every integer timestep is then "on the training schedule" (no spurious warning)
                  original_inference_steps=path.num_train_timesteps,
                  steps_offset=1)  # unused with custom timesteps; SD pipelines rewrite any other value with a warning
    config = dict(LCMScheduler.from_config(config).config)
    return FewStepScheduler("LCMScheduler", _plain(config), steps, **common)


def flow_scheduler(path: FlowPath, prediction_type: str, grids: Mapping[int, torch.Tensor], boundary: Any,
                   stochastic: bool = True, **common: Any) -> FewStepScheduler:
    """FlowMatchEulerDiscreteScheduler(stochastic_sampling=True): x0 = x - sigma v, then re-noise to the next sigma.
    stochastic=False: its plain Euler step, which on the flow path IS the DDIM jump (1 - s') x0 + s' eps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if prediction_type != "flow_prediction":
        raise SchedulerExportError(f"flow students predict 'flow_prediction', not {prediction_type!r}")
    t_b, scaling, sigma_data = _boundary_params(boundary)
    if boundary is not None and t_b != 0.0:
        raise SchedulerExportError(f"FlowMatchEulerDiscreteScheduler has no boundary condition; the student's is at "
                                   f"sigma={t_b}, not 0")
    worst = 0.0
    steps = {}
    for n, grid in grids.items():
        if (grid <= 0).any() or (grid > 1).any():
            raise SchedulerExportError(f"the {n}-step sigmas {grid.tolist()} must lie in (0, 1]")
        if boundary is not None:
            c_skip, c_out = lcm_boundary_scalings(path, grid, t_b, sigma_data, scaling)
            worst = max(worst, float(c_skip.max()), float((1 - c_out).abs().max()))
        steps[n] = {"sigmas": grid.tolist()}
    if worst > MAX_BOUNDARY_ERROR:
        raise SchedulerExportError(
            f"the student's boundary condition deviates from x0-prediction by {worst:.2e} on the flow grid; "
            "FlowMatchEulerDiscreteScheduler would not reproduce it (raise timestep_scaling or add an "
            "export_scheduler hook)")
    config = dict(FlowMatchEulerDiscreteScheduler(num_train_timesteps=path.num_train_timesteps, shift=1.0,
                                                  use_dynamic_shifting=False, stochastic_sampling=stochastic).config)
    return FewStepScheduler("FlowMatchEulerDiscreteScheduler", _plain(config), steps, max_boundary_error=worst,
                            notes=("sigmas are used as given (shift 1.0, no dynamic shifting); "
                                   "the student's boundary scaling c_skip/c_out is left out, "
                                   f"a relative difference of at most {worst:.1e}"
                                   if worst else "sigmas are used as given (shift 1.0, no dynamic shifting)"),
                            **common)


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of a scheduler config (tuples -> lists, no private keys)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, default=list))
