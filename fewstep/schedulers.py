"""fewstep's own diffusers scheduler, for the few-step samplers no stock diffusers scheduler reproduces exactly.

Exports use a stock scheduler (LCMScheduler, FlowMatchEulerDiscreteScheduler) whenever it visits the student's
times exactly; the rest ship `FewStepConsistencyScheduler`: TCD's partial re-noise with 0 < gamma < 1 (diffusers'
TCDScheduler floors s to an integer timestep and returns a slightly noised x at t = 0 instead of x0),
deterministic VP jumps between custom timesteps (DDIMScheduler takes none), non-integer VP timesteps (sCM
students), and samplers whose gamma is measured on TrigFlow's angle. It is a diffusers SchedulerMixin /
ConfigMixin: `from_pretrained`, `save_pretrained` and every pipeline's `set_timesteps(timesteps=... | sigmas=...)`
-> `step` loop work with it; a full export's model_index.json names it as ["fewstep.schedulers",
"FewStepConsistencyScheduler"], which diffusers loads once `fewstep.schedulers` is imported.

Each step: (x0, eps) from the network output on the student's own path (fewstep.diffusion), the LCM boundary
scaling when the student has one, then x0 at the last time, else `tcd_step` to the next time -- the same
functions the trainer's sampler (`objectives.base.consistency_sample`) calls.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from .diffusion import FlowPath, apply_lcm_boundary, expand_like, path_from_config, tcd_step, to_x0_eps


class FewStepConsistencyScheduler(SchedulerMixin, ConfigMixin):
    """Multistep consistency sampling with TCD's gamma on any fewstep path (VP or flow), custom times only.

    path: the student's path config (`GaussianPath.config()`); time_axis: the path config whose time measures
    gamma's partial re-noise (None: `path`; sCM samplers: TrigFlow); boundary_time: the LCM boundary condition's
    time (None: the network's x0 is used as is).
    """

    order = 1
    _compatibles: list[str] = []

    @register_to_config
    def __init__(self, path: dict | None = None, prediction_type: str = "epsilon", gamma: float = 1.0,
                 time_axis: dict | None = None, boundary_time: float | None = None, sigma_data: float = 0.5,
                 timestep_scaling: float = 10.0, num_train_timesteps: int = 1000):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.path = path_from_config(path or {"name": "vp", "scheduler_config": {}})
        self.time_axis = path_from_config(time_axis) if time_axis else None
        self.init_noise_sigma = 1.0  # latents are passed at the first time's noise level (initial_state)
        self.num_inference_steps: int | None = None
        self.times = self.timesteps = torch.zeros(0)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[float] | None = None, sigmas: list[float] | None = None, **_: Any) -> None:
        """The student's times: `timesteps=` (VP, may be non-integer) or `sigmas=` (flow), from the export's
        fewstep_export.json; pipelines' extra kwargs (FLUX's mu) are ignored: the sigmas are used as given."""
        flow = isinstance(self.path, FlowPath)
        values = sigmas if flow else timesteps
        if values is None or (timesteps if flow else sigmas) is not None:
            raise ValueError(f"FewStepConsistencyScheduler on a {self.path.name} path takes "
                             f"{'sigmas' if flow else 'timesteps'}=[...] from the export's fewstep_export.json "
                             "(or LoadedExport.call_kwargs(steps))")
        if num_inference_steps is not None and num_inference_steps != len(values):
            raise ValueError(f"num_inference_steps={num_inference_steps} but {len(values)} times were given")
        self.times = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
        self.timesteps = self.path.model_timestep(self.times).to(device=device, dtype=torch.float32)
        self.num_inference_steps = len(self.times)
        self._step_index, self._begin_index = None, None

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(timesteps=... | sigmas=...) before step")
        if self._step_index is None:
            self._step_index = self._begin_index or 0
        i = self._step_index
        x = sample.float()
        t = self.times[i].to(x.device).expand(len(x))
        x0, eps = to_x0_eps(model_output.float(), self.config.prediction_type, x, t, self.path)
        if self.config.boundary_time is not None:
            x0 = apply_lcm_boundary(x, x0, t, self.path, self.config.boundary_time, self.config.sigma_data,
                                    self.config.timestep_scaling)
            eps = (x - expand_like(self.path.alpha(t), x).to(x) * x0) / expand_like(self.path.sigma(t), x).to(x)
        if i + 1 == len(self.times):
            prev = x0
        else:
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            t_next = self.times[i + 1].to(x.device).expand(len(x))
            prev = tcd_step(x0, eps, t_next, self.config.gamma, noise, self.path, self.time_axis)
        self._step_index = i + 1
        prev = prev.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x0) at model timesteps (img2img pipelines)."""
        t = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1).expand(len(original_samples))
        if isinstance(self.path, FlowPath):
            t = t / self.path.num_train_timesteps
        return self.path.add_noise(original_samples.float(), noise.float(), t.to(original_samples.device)).to(
            original_samples.dtype)
