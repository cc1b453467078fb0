"""The few-step generator that distribution-matching, score-identity and adversarial objectives train.

The generator G is the student's x0 prediction at fixed student times, decreasing (one time: a 1-step
generator). Its training inputs at step k > 0 are either the student's own sampling from noise (backward
simulation, DMD2 §4.4) or real data noised to the step's time; ADD (Sauer et al. 2023, §3.1) noises real
data at every step, the first included. Sampling: x0 = G(x_t, t), re-noised to the next time with fresh noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..diffusion import VPPath, renoise_step
from ..diffusion.timesteps import _trainable_range
from ..models.base import Cond, Denoiser
from .base import Batch, Objective, initial_state, renoise_sample, time_like


def interval_times(lo: float | Tensor, hi: float | Tensor, n: int, generator: torch.Generator, device: torch.device,
                   fractions: tuple[float, float] = (0.0, 1.0), shift: float = 1.0) -> Tensor:
    """n times lo + (hi - lo) u, u uniform on `fractions` then shifted u -> shift u / (1 + (shift - 1) u)
    (SD3's shift, which moves mass towards hi)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    u = fractions[0] + (fractions[1] - fractions[0]) * u
    if shift != 1.0:
        u = shift * u / (1 + (shift - 1) * u)
    lo = torch.as_tensor(lo, dtype=torch.float64, device=device)
    hi = torch.as_tensor(hi, dtype=torch.float64, device=device)
    return lo + (hi - lo) * u


def pairwise_diversity(x: Tensor) -> Tensor:
    """Mean pairwise L2 distance between samples (per sqrt(dim)): a collapse alarm across seeds."""
    flat = x.detach().float().flatten(1)
    if flat.shape[0] < 2:
        return flat.new_zeros(())
    return torch.pdist(flat).mean() / math.sqrt(flat.shape[1])


def per_sample(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(-1, *([1] * (like.ndim - 1)))


class FewStepGenerator(Objective):
    """Base of objectives that train `student` as a few-step generator against `teacher`."""

    def __init__(self, student: Denoiser, teacher: Denoiser, *, student_times: list[float] | None = None,
                 time_range: tuple[float, float] = (0.02, 0.98), time_shift: float = 1.0,
                 backward_simulation: bool = True, data_inputs: bool = False):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.teacher.requires_grad_(False)
        times = student_times if student_times is not None else [teacher.path.t_max]
        if not times or any(a <= b for a, b in zip(times, times[1:])):
            raise ValueError(f"student_times must be strictly decreasing path times, got {times}")
        self.register_buffer("times", torch.tensor(times, dtype=torch.float64), persistent=False)
        self.time_range, self.time_shift = tuple(time_range), time_shift
        self.backward_simulation, self.data_inputs = backward_simulation, data_inputs

    # ---- noise levels ----
    def noise_times(self, n: int, generator: torch.Generator, device: torch.device,
                    fractions: tuple[float, float] | None = None) -> Tensor:
        """t ~ U[min, max] fraction of the path (DMD2: 0.02-0.98 of the timesteps), optionally shifted."""
        lo, hi = _trainable_range(self.teacher.path)
        return interval_times(lo, hi, n, generator, device, fractions or self.time_range, self.time_shift)

    def noise_like(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    # ---- the generator ----
    def generator_inputs(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x_t, t) fed to the trained generator step, one student time per sample.

        data_inputs (ADD): real data noised to t at every step. Otherwise step 0 starts from pure noise and later
        steps are, with backward simulation, the student's own multi-step sampling from noise (no grad, fresh
        noise at each re-noising), without it real data noised to t (DMD2's ablation).
        """
        n, device = len(batch), batch.x0.device
        k = len(self.times)
        index = (torch.randint(0, k, (n,), generator=generator, device=device) if k > 1
                 else torch.zeros(n, dtype=torch.long, device=device))
        t = self.times[index]
        noise = self.noise_like(batch.x0, generator)
        if self.data_inputs:
            return self.teacher.path.add_noise(batch.x0, noise, t), t
        start = initial_state(noise, self.teacher.path, self.times[0])
        if k == 1:
            return start, t
        if not self.backward_simulation:
            noisy_data = self.teacher.path.add_noise(batch.x0, noise, t)
            return torch.where(per_sample(index == 0, start), start, noisy_data), t
        return self.backward_simulate(start, index, batch.cond, generator), t

    @torch.no_grad()
    def backward_simulate(self, start: Tensor, index: Tensor, cond: Cond | None, generator: torch.Generator) -> Tensor:
        """The student's own sampler from x_{t_0} = start; returns, per sample, its state at times[index]."""
        x, out = start, start.clone()
        for j in range(int(index.max())):
            x0 = self.student.predict(x, time_like(self.times[j], len(x), x.device), cond)
            x = renoise_step(x0, time_like(self.times[j + 1], len(x), x.device), self.noise_like(x, generator),
                             self.teacher.path)
            out = torch.where(per_sample(index == j + 1, x), x, out)
        return out

    def generate(self, batch: Batch, generator: torch.Generator) -> Tensor:
        return self.generate_with_times(batch, generator)[0]

    def generate_with_times(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(the generator's samples, the path time of each one's input)."""
        x_t, t = self.generator_inputs(batch, generator)
        return self.student.predict(x_t, t, batch.cond), t

    # ---- sampling ----
    @property
    def num_steps(self) -> int:
        return len(self.times)

    def sampling_times(self, num_steps: int) -> Tensor:
        """The trained times (num_steps == len(times)), an even subset of them (fewer steps), or an even grid
        from the first trained time (more steps than trained: untrained later times, for curiosity only)."""
        k = len(self.times)
        if num_steps <= k:
            return self.times[(torch.arange(num_steps) * k) // num_steps]
        lo, hi = _trainable_range(self.teacher.path)[0], float(self.times[0])
        grid = torch.tensor([hi - (hi - lo) * i / num_steps for i in range(num_steps)], dtype=torch.float64,
                            device=self.times.device)
        return grid.round() if isinstance(self.teacher.path, VPPath) else grid  # VP: integer DDPM timesteps

    @torch.no_grad()
    def sample(self, noise: Tensor, num_steps: int, cond: Cond | None, generator: torch.Generator) -> Tensor:
        """Multi-step sampling: x0 = G(x_t, t), re-noise to the next time with fresh noise (DMD2 §4.4)."""
        return renoise_sample(lambda x, t: self.student.predict(x, t, cond), noise,
                              self.sampling_times(num_steps).to(noise.device), generator, self.teacher.path)
