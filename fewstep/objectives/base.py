"""What every objective provides to the trainer.

Objectives own only the math: which networks they train, in which phases, and the loss
of each phase. The trainer owns optimisers, update ratios, accumulation, precision,
EMA and checkpoints (see fewstep/training/trainer.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..diffusion import GaussianPath, renoise_step, tcd_step
from ..models.base import NON_BATCHED_COND_KEYS, Cond, Denoiser


@dataclass(frozen=True)
class Phase:
    """One optimiser update per repeat, per training step (repeats > 1: two-time-scale updates)."""

    name: str
    network: str
    repeats: int = 1


@dataclass
class Batch:
    """Clean data (pixels or latents) and its conditioning, as objectives see it."""

    x0: Tensor
    cond: Cond | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x0.shape[0]


class Objective(nn.Module):
    """Base class: subclasses set `self.networks` (name -> trainable module) and implement loss()."""

    divergence_hint: str = "lower the learning rate or enable gradient clipping (run.max_grad_norm)"

    def trainable_networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        return [Phase(name, name) for name in self.trainable_networks()]

    def loss(self, phase: str, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss to minimise in `phase`, plus named values to log."""
        raise NotImplementedError

    def after_update(self, phase: str) -> None:
        """Hook after an optimiser step of `phase` (e.g. move an EMA target network)."""

    def after_student_init(self, source_state: dict[str, Tensor]) -> None:
        """Hook after student.init loaded the trained networks from another run: networks derived from the student
        at construction (e.g. an EMA target) follow the loaded weights. source_state is the extra_state of the
        objective that trained the source run ({} when its checkpoint has none)."""

    def extra_state(self) -> dict[str, Tensor]:
        """Evolving state that is not a trained network (EMA targets, running stats) for checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no extra state but the checkpoint has {sorted(state)}")

    @torch.no_grad()
    def sample(self, noise: Tensor, num_steps: int, cond: Cond | None, generator: torch.Generator) -> Tensor:
        """The student's few-step sampler: clean samples from N(0, I) noise."""
        raise NotImplementedError


def initial_state(noise: Tensor, path: GaussianPath, t_start: float | Tensor) -> Tensor:
    """Start of sampling at t_start: x = sigma(t_start) * noise (the small alpha x0 term is dropped,
    as diffusers pipelines do)."""
    sigma = path.sigma(torch.as_tensor(t_start, dtype=torch.float64))
    return noise * sigma.to(noise)


def drop_conditions(denoiser: Denoiser, cond: Cond | None, probability: float,
                    generator: torch.Generator) -> Cond | None:
    """Replace the condition of each sample by the unconditional one with `probability` (CFG training's
    condition dropout, so the unconditional branch of a trained score stays learned)."""
    if not cond or probability <= 0:
        return cond
    null = denoiser.null_cond(cond)
    batch = next(v.shape[0] for k, v in cond.items() if k not in NON_BATCHED_COND_KEYS)
    device = next(iter(cond.values())).device
    drop = torch.rand(batch, generator=generator, device=device) < probability
    return {k: (v if k in NON_BATCHED_COND_KEYS
                else torch.where(drop.reshape(-1, *([1] * (v.ndim - 1))), null[k].to(v), v))
            for k, v in cond.items()}


def time_like(value: float | Tensor, batch: int, device: torch.device) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float64, device=device).expand(batch).clone()


@torch.no_grad()
def consistency_sample(denoise: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], noise: Tensor,
                       times: Sequence[float] | Tensor, gamma: float, generator: torch.Generator,
                       path: GaussianPath) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) with TCD's gamma (Zheng et al. 2024, Eq. 9):
    predict (x0, eps) at each time, step to the next (gamma = 1: full re-noise); returns the last x0."""
    x = initial_state(noise, path, times[0])
    for i in range(len(times)):
        x0, eps = denoise(x, time_like(times[i], len(x), x.device))
        if i + 1 == len(times):
            return x0
        fresh = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = tcd_step(x0, eps, time_like(times[i + 1], len(x), x.device), gamma, fresh, path)
    raise ValueError("consistency_sample needs at least one time")


@torch.no_grad()
def renoise_sample(predict_x0: Callable[[Tensor, Tensor], Tensor], noise: Tensor, times: Tensor,
                   generator: torch.Generator, path: GaussianPath) -> Tensor:
    """Multistep sampling by full re-noising, as LCMScheduler steps (LCM Alg. 1; DMD2 §4.4): x0 = predict_x0(x_t, t),
    then x = path.add_noise(x0, fresh noise, next t); returns the last x0."""
    x = initial_state(noise, path, times[0])
    for i in range(len(times)):
        x0 = predict_x0(x, time_like(times[i], len(x), x.device))
        if i + 1 == len(times):
            return x0
        fresh = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = renoise_step(x0, time_like(times[i + 1], len(x), x.device), fresh, path)
    raise ValueError("renoise_sample needs at least one time")
