"""Continuous-time consistency distillation, sCM (Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models", arXiv:2410.11081).

TrigFlow (Sec. 3): x_t = cos(t) x0 + sin(t) z with z ~ N(0, sigma_d^2 I), t in [0, pi/2], and the consistency
function f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t, t), so f(x, 0) = x holds by construction. Any teacher
is seen on TrigFlow analytically (SANA-Sprint, Chen et al. 2025, Sec. 3.1, generalised to every Gaussian path
by matching the SNR). The continuous-time CM gradient equals the gradient of (Sec. 4.2, with theta^- = sg(theta))

    || F_theta - F_theta^- - g ||^2,   g = -cos^2 t (sigma_d F^- - dx_t/dt) - r cos t sin t (x_t + sigma_d dF^-/dt)

where dx_t/dt = sigma_d F_teacher is the teacher's PF-ODE and dF^-/dt = dF/dx_t dx_t/dt + dF/dt one JVP of the
student. Stabilisers (Sec. 4.2): tangent normalisation g / (||g|| + c), tangent warm-up r: 0 -> 1, adaptive
weighting with a learned log-variance u(t) over t, log-normal proposal over sigma_d tan(t).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Literal

import torch
from torch import Tensor, nn

from ..config import StrictModel
from ..diffusion import TrigFlowPath, expand_like, from_x0_eps, sample_training_times, to_x0_eps
from ..models.base import Cond, Denoiser
from .base import Batch, Objective, Phase, consistency_sample


def trigflow_consistency(x_t: Tensor, t: Tensor, F: Tensor, sigma_data: float) -> Tensor:
    """f(x_t, t) = cos(t) x_t - sin(t) sigma_d F (sCM Sec. 3); exactly x_t at t = 0."""
    return expand_like(torch.cos(t), x_t) * x_t - expand_like(torch.sin(t), x_t) * sigma_data * F


class TrigFlowDenoiser(Denoiser):
    """Any Denoiser seen on the TrigFlow path, predicting the sCM output F = (dx_t/dt) / sigma_d.

    The TrigFlow state (x_t, t) maps to the base path's point of equal SNR (SANA-Sprint's input rescaling and time
    mapping, for VP, flow, EDM, ...): t_base solves log_snr_base(t_base) = log_snr_trig(t), x_base = k x_t with
    k = alpha_base / cos t = sigma_base / (sigma_d sin t); the base's raw prediction converts to F through (x0, eps),
    which both paths share. Times stay fp32/fp64 end to end (the fp32 time path of sCM Sec. 4.1).
    """

    def __init__(self, base: Denoiser, sigma_data: float = 0.5):
        super().__init__(TrigFlowPath(sigma_data), "trigflow")
        self.base = base
        self.sigma_data = sigma_data
        noisiest = torch.as_tensor(base.path.t_max, dtype=torch.float64)
        # VP schedules end at a non-zero SNR: their noisiest TrigFlow time is below pi/2
        self.t_max = min(math.pi / 2, float(self.path.t_from_log_snr(base.path.log_snr(noisiest))))

    def base_state(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x_base, t_base) at equal SNR. k from the norms (alpha^2 + sigma^2), exact at t = 0 and t = pi/2 alike."""
        if t.dtype in (torch.float16, torch.bfloat16):
            raise TypeError(f"TrigFlow times must be float32/float64, got {t.dtype} (sCM's fp32 time path)")
        trig, base = self.path, self.base.path
        t_base = base.t_from_log_snr(trig.log_snr(t))
        k = ((base.alpha(t_base) ** 2 + base.sigma(t_base) ** 2) / (trig.alpha(t) ** 2 + trig.sigma(t) ** 2)).sqrt()
        return x_t * expand_like(k, x_t), t_base

    def F(self, network: Callable[[Tensor, Tensor, Cond | None], Tensor], x_t: Tensor, t: Tensor,
          cond: Cond | None) -> Tensor:
        x_base, t_base = self.base_state(x_t, t)
        raw = network(x_base, t_base, cond)
        x0, eps = to_x0_eps(raw, self.base.prediction_type, x_base, t_base, self.base.path)
        return from_x0_eps(x0, eps, "trigflow", t, self.path)

    def output_scale(self, t: Tensor) -> Tensor:
        """dF / d(raw network output) per sample: F is affine in the base network's output, so put raw = 1, x = 0."""
        t_base = self.base.path.t_from_log_snr(self.path.log_snr(t))
        zero, one = torch.zeros_like(t)[:, None], torch.ones_like(t)[:, None]
        x0, eps = to_x0_eps(one, self.base.prediction_type, zero, t_base, self.base.path)
        return from_x0_eps(x0, eps, "trigflow", t, self.path)[:, 0]

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        return self.F(self.base.call_network, x_t, t, cond)  # through the DDP wrapper when trained

    def unwrapped(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        """F through the bare network (no DDP wrapper): for the no-grad tangent pass."""
        return self.F(self.base, x_t, t, cond)

    def null_cond(self, cond: Cond) -> Cond:
        return self.base.null_cond(cond)


class AdaptiveWeight(nn.Module):
    """Learned log-variance u(t) of the loss at each time (sCM Sec. 4.2 'adaptive weighting', EDM2's form):
    fixed Fourier features of c_noise = log(sigma_d tan t) / 4, then one linear layer, zero-initialised (u = 0)."""

    def __init__(self, sigma_data: float = 0.5, num_features: int = 128, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.sigma_data = sigma_data
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_features, generator=g))
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_features, generator=g))
        self.linear = nn.Linear(num_features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, t: Tensor) -> Tensor:
        c_noise = torch.log(self.sigma_data * torch.tan(t.double())) / 4
        features = math.sqrt(2) * torch.cos(c_noise[:, None] * self.freqs.double() + self.phases.double())
        return self.linear(features.to(self.linear.weight.dtype)).squeeze(1)


@contextlib.contextmanager
def tangent_attention(denoiser: Denoiser, backend: str) -> Iterator[None]:
    """Attention that supports forward-mode AD during the tangent pass: PyTorch's MATH SDPA (flash / efficient /
    cuDNN and the CPU flash kernel have no JVP), or fewstep's Triton JVP kernels ('fewstep')."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    network = getattr(denoiser, "model", None)
    with contextlib.ExitStack() as stack:
        if backend == "fewstep" and network is not None:
            from ..kernels import jvp_attention_enabled

            stack.enter_context(jvp_attention_enabled(network))
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield


def student_tangent(student: TrigFlowDenoiser, x_t: Tensor, t: Tensor, dxt_dt: Tensor, cond: Cond | None, *,
                    method: Literal["jvp", "finite_difference"] = "jvp", fd_step: float = 1e-3) -> Tensor:
    """cos(t) sin(t) dF/dt along the teacher ODE, dF/dt = (dF/dx_t) dx_t/dt + dF/dt, without gradients.

    One JVP with tangents (cos t sin t dx_t/dt, cos t sin t) gives the product directly (sCM Sec. 5.1's JVP
    rearrangement). 'finite_difference': the central difference of the student along the same direction.
    """
    scale = torch.cos(t) * torch.sin(t)
    direction = (dxt_dt * expand_like(scale, dxt_dt), scale)

    def F(x: Tensor, time: Tensor) -> Tensor:
        return student.unwrapped(x, time, cond)

    with torch.no_grad():
        if method == "jvp":
            return torch.func.jvp(F, (x_t, t), direction)[1]
        if method == "finite_difference":
            h = fd_step
            ahead = F(x_t + h * direction[0], t + h * direction[1])
            behind = F(x_t - h * direction[0], t - h * direction[1])
            return (ahead - behind) / (2 * h)
    raise ValueError(f"unknown tangent method {method!r}; expected 'jvp' or 'finite_difference'")


class SCMLoss:
    """The sCM distillation loss per sample (Lu & Song 2024, Sec. 4.2), theta^- = sg(theta):

        L(t) = exp(-u(t)) / D || F_theta - F_theta^- - g / (||g|| + c) ||^2 + u(t)

    with g above and u(t) the learned log-variance. Called by ContinuousConsistencyDistillation, and by rCM
    (which adds its DMD regulariser on the same student).
    """

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.0, p_std: float = 1.4, tangent_norm_c: float = 0.1,
                 guidance_scale: float = 1.0, tangent: Literal["jvp", "finite_difference"] = "jvp",
                 fd_step: float = 1e-3, jvp_attention: Literal["math", "fewstep"] = "math",
                 loss_units: Literal["auto", "network", "F"] = "auto"):
        self.sigma_data, self.p_mean, self.p_std, self.c = sigma_data, p_mean, p_std, tangent_norm_c
        self.guidance_scale, self.tangent, self.fd_step = guidance_scale, tangent, fd_step
        self.jvp_attention, self.loss_units = jvp_attention, loss_units

    def draw_times(self, n: int, generator: torch.Generator, device: torch.device, t_max: float) -> Tensor:
        """Log-normal proposal over sigma_d tan(t) (sCM Sec. 4.2), kept inside the teacher's range."""
        t = sample_training_times(TrigFlowPath(self.sigma_data), n, generator, "lognormal", mean=self.p_mean,
                                  std=self.p_std, device=device)
        return t.clamp(max=t_max)

    def tangent_of(self, student: TrigFlowDenoiser, x_t: Tensor, t: Tensor, dxt_dt: Tensor,
                   cond: Cond | None) -> Tensor:
        try:
            with tangent_attention(student.base, self.jvp_attention):
                return student_tangent(student, x_t, t, dxt_dt, cond, method=self.tangent, fd_step=self.fd_step)
        except NotImplementedError as err:
            raise NotImplementedError(f"{err}\nsCM needs forward-mode AD through the student. Fix: set "
                                      "objective.jvp_attention=fewstep or run.attention_backend=fewstep (JVP "
                                      "attention kernels), or objective.tangent=finite_difference") from err

    def tangent_target(self, F_sg: Tensor, dxt_dt: Tensor, x_t: Tensor, t: Tensor, cs_dF_dt: Tensor,
                       warmup: float) -> Tensor:
        """g = -cos^2 t (sigma_d F^- - dx_t/dt) - r cos t sin t (x_t + sigma_d dF^-/dt)  (= cos t df^-/dt at r = 1)."""
        sd = self.sigma_data
        cos, sin = expand_like(torch.cos(t), F_sg), expand_like(torch.sin(t), F_sg)
        return -cos ** 2 * (sd * F_sg - dxt_dt) - warmup * (cos * sin * x_t + sd * cs_dF_dt)

    def in_network_units(self, student: TrigFlowDenoiser) -> bool:
        """Measure the residual in the student network's output units (divided by dF/d output) instead of F?
        'auto': yes for epsilon / x0 networks, whose dF/d output grows as 1/cos t near pure noise (epsilon) or
        1/sin t near the data (x0); no for flow / v / F networks (bounded: the paper's unit weight on F)."""
        if self.loss_units == "auto":
            return student.base.prediction_type in ("epsilon", "sample")
        return self.loss_units == "network"

    def __call__(self, student: TrigFlowDenoiser, teacher: TrigFlowDenoiser, x0: Tensor, cond: Cond | None,
                 generator: torch.Generator, warmup: float, weight: AdaptiveWeight | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        t = self.draw_times(x0.shape[0], generator, x0.device, min(student.t_max, teacher.t_max))
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x_t = student.path.add_noise(x0, z, t)
        with torch.no_grad():  # the teacher ODE and the tangent: no graph, separate from the with-grad forward
            dxt_dt = self.sigma_data * teacher.guided(x_t, t, cond, self.guidance_scale)
            cs_dF_dt = (self.tangent_of(student, x_t, t, dxt_dt, cond) if warmup > 0  # cos t sin t dF^-/dt
                        else torch.zeros_like(x_t))
        dtype = torch.promote_types(x0.dtype, torch.float32)  # the loss in fp32 (fp64 in exact tests)
        F = student(x_t, t, cond).to(dtype)
        F_sg = F.detach()
        g = self.tangent_target(F_sg, dxt_dt.to(dtype), x_t.to(dtype), t, cs_dF_dt.to(dtype), warmup)
        g_norm = g.flatten(1).norm(dim=1)
        residual = F - F_sg - g / expand_like(g_norm + self.c, g)  # tangent normalisation
        if self.in_network_units(student):
            residual = residual / expand_like(student.output_scale(t), residual)
        mse = residual.flatten(1).pow(2).mean(1)  # ||.||^2 / D
        u = weight(t).to(dtype) if weight is not None else torch.zeros_like(mse)
        loss = torch.exp(-u) * mse + u
        logs = {"scm/mse": mse.detach().mean(), "scm/tangent_norm": g_norm.detach().mean(),
                "scm/logvar": u.detach().mean(), "scm/warmup": torch.tensor(float(warmup))}
        return loss, logs


class ContinuousConsistencyDistillation(Objective):
    """sCM distillation (sCD): no target network (theta^- = sg(theta)), no time grid, one JVP per step.

    The learned log-variance u(t) lives on the student (`student.scm_weight`): the trainer gives each network one
    optimiser and one phase, so training u in the student's own optimiser step needs no extra forward pass, and
    checkpoints / resume / load_run carry it with the student's state dict (the exported diffusers network does not).
    Spike guard: a tangent norm (in loss) or post-clip gradient norm (after the update) above spike_factor x its
    running mean is logged as inf, which the trainer's NaN/Inf check turns into its stop path. Drift guard: the same
    for the running tangent norm above drift_factor x its level when the guards start (after the tangent warm-up),
    a divergence spread over hundreds of updates that never spikes against a running mean.
    """

    divergence_hint = ("sCM diverged (NaN/Inf, or scm/tangent_spike / scm/grad_spike = inf: the tangent or gradient "
                       "norm jumped above spike_factor x its running mean; scm/tangent_drift = inf: the running "
                       "tangent norm passed drift_factor x its post-warm-up level). Keep the time path in fp32 (do "
                       "not cast timesteps or time embeddings to fp16/bf16), lengthen objective.tangent_warmup_steps, "
                       "lower the learning rate, or set objective.tangent=finite_difference to rule out the JVP "
                       "attention kernel")

    def __init__(self, student: Denoiser, teacher: Denoiser, loss: SCMLoss | None = None, *,
                 tangent_warmup_steps: int = 1000, adaptive_weighting: bool = True, weight_features: int = 128,
                 mid_time: float = 1.1, gamma: float = 1.0, spike_factor: float = 100.0, spike_warmup: int = 20,
                 drift_factor: float = 10.0):
        super().__init__()
        self.scm = loss or SCMLoss()
        self.student, self.teacher = student, teacher
        self.teacher.requires_grad_(False)
        sd = self.scm.sigma_data
        self.student_tf, self.teacher_tf = TrigFlowDenoiser(student, sd), TrigFlowDenoiser(teacher, sd)
        if adaptive_weighting:
            student.scm_weight = AdaptiveWeight(sd, weight_features)
        self.tangent_warmup_steps, self.mid_time, self.gamma = tangent_warmup_steps, mid_time, gamma
        self.spike_factor, self.spike_warmup, self.drift_factor = spike_factor, spike_warmup, drift_factor
        # optimiser updates so far, the guards' running means and the drift guard's reference level: extra_state, so
        # resume is exact
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("tangent_norm_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("grad_norm_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("tangent_norm_reference", torch.zeros((), dtype=torch.float64))
        self._grad_spike = False

    def trainable_networks(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def phases(self) -> list[Phase]:
        return [Phase("student", "student")]

    @property
    def warmup(self) -> float:
        """Tangent warm-up r, linear from 0 to 1 over the first tangent_warmup_steps updates."""
        return 1.0 if self.tangent_warmup_steps <= 0 else min(1.0, int(self.updates) / self.tangent_warmup_steps)

    def scm_loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        weight = getattr(self.student, "scm_weight", None)
        loss, logs = self.scm(self.student_tf, self.teacher_tf, batch.x0, batch.cond, generator, self.warmup, weight)
        if self._spiked(self.tangent_norm_mean, logs["scm/tangent_norm"]):
            logs["scm/tangent_spike"] = torch.tensor(math.inf)
        if self._drifted():
            logs["scm/tangent_drift"] = torch.tensor(math.inf)
        if self._grad_spike:
            logs["scm/grad_spike"] = torch.tensor(math.inf)
        loss = loss.mean()
        return loss, {"scm_loss": loss.detach(), **logs}

    def loss(self, phase: str, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        return self.scm_loss(batch, generator)

    def _spiked(self, running_mean: Tensor, value: Tensor) -> bool:
        """value > spike_factor x its running mean (after spike_warmup updates); updates the running mean."""
        value = value.detach().double()
        if not bool(torch.isfinite(value)):
            return False  # non-finite values stop the trainer by themselves
        mean = float(running_mean)
        spiked = self.spike_factor > 0 and int(self.updates) >= self.spike_warmup and mean > 0 and \
            float(value) > self.spike_factor * mean
        running_mean.copy_(value if mean == 0 else 0.9 * running_mean + 0.1 * value)
        return spiked

    def _drifted(self) -> bool:
        """The running tangent norm above drift_factor x its value at the first update past both warm-ups (taken
        then as the reference: a warm restart or an older checkpoint without one takes it on its first check)."""
        if self.drift_factor <= 0 or int(self.updates) < max(self.tangent_warmup_steps, self.spike_warmup):
            return False
        if float(self.tangent_norm_reference) == 0:
            self.tangent_norm_reference.copy_(self.tangent_norm_mean)
            return False
        return float(self.tangent_norm_mean) > self.drift_factor * float(self.tangent_norm_reference)

    @torch.no_grad()
    def after_update(self, phase: str) -> None:
        grads = [p.grad.detach().double().pow(2).sum() for p in self.student.parameters() if p.grad is not None]
        if grads:
            self._grad_spike = self._spiked(self.grad_norm_mean, torch.stack(grads).sum().sqrt())
        self.updates += 1

    GUARD_STATE = ("updates", "tangent_norm_mean", "grad_norm_mean", "tangent_norm_reference")

    def after_student_init(self, source_state: dict[str, Tensor]) -> None:
        """A warm restart from an sCM-trained run (sCM, rCM, sCM + LADD: its state has the guards' keys) carries on
        that run's update count, so its tangent warm-up does not restart at r = 0: a consistency model trained at
        r = 1 would otherwise be pulled for tangent_warmup_steps updates by a tangent without its dF/dt term. The
        guards' running means start afresh (this run's batch and learning rate set their level). A student from
        any other run (DMD, SiD, the teacher) warms up from 0."""
        if all(name in source_state for name in ("updates", "tangent_norm_mean")):
            self.updates.copy_(source_state["updates"])

    def extra_state(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).clone() for name in self.GUARD_STATE}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        for name in self.GUARD_STATE:
            if name == "tangent_norm_reference" and name not in state:
                continue  # a checkpoint from before the drift guard: the reference is taken again on the next check
            getattr(self, name).copy_(state[name])

    def sampling_times(self, num_steps: int) -> list[float]:
        """t_max, then evenly from mid_time down (sCM samples 2 steps at t = pi/2 (or t_max) and 1.1)."""
        top = self.student_tf.t_max
        mids = torch.linspace(min(self.mid_time, top), 0.0, num_steps, dtype=torch.float64)[:-1].tolist()
        return [top, *mids] if num_steps > 1 else [top]

    def sampling_grid(self, num_steps: int) -> Tensor:
        """The sampler's TrigFlow times as the student's native times (equal SNR): with gamma = 1 the TrigFlow
        sampler IS the native jump-to-x0-and-re-noise sampler at these times (the state maps by
        x_native = k x_trig, and k (cos t x0 + sin t sigma_d z) = alpha x0 + sigma z)."""
        t = torch.tensor(self.sampling_times(num_steps), dtype=torch.float64)
        return self.student.path.t_from_log_snr(self.student_tf.path.log_snr(t))

    def export_scheduler(self, steps: list[int]):
        """The native sampler at sampling_grid; gamma < 1 is measured on TrigFlow's angle, as `sample` does."""
        from ..export.schedulers import default_export_scheduler

        return default_export_scheduler(self, steps, gamma=self.gamma, time_axis=self.student_tf.path)

    @torch.no_grad()
    def sample(self, noise: Tensor, num_steps: int, cond: Cond | None, generator: torch.Generator) -> Tensor:
        """Multistep consistency sampling (Song et al. 2023, Alg. 1) on TrigFlow; gamma < 1 is TCD's partial
        re-noise (tcd_step), gamma = 1 the full one."""
        path = self.student_tf.path

        def denoise(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            return to_x0_eps(self.student_tf(x, t, cond), "trigflow", x, t, path)

        return consistency_sample(denoise, noise, self.sampling_times(num_steps), self.gamma, generator, path)


class SCMConfig(StrictModel):
    """sCM / sCD (fewstep.objectives.scm)."""

    name: Literal["scm"] = "scm"
    sigma_data: float = 0.5
    p_mean: float = -1.0  # log-normal proposal over sigma_d tan(t)
    p_std: float = 1.4
    tangent_norm_c: float = 0.1
    tangent_warmup_steps: int = 1000
    guidance_scale: float = 1.0
    adaptive_weighting: bool = True
    weight_features: int = 128
    tangent: Literal["jvp", "finite_difference"] = "jvp"
    fd_step: float = 1.0e-3
    jvp_attention: Literal["math", "fewstep"] = "math"
    mid_time: float = 1.1
    loss_units: Literal["auto", "network", "F"] = "auto"  # residual in F units or the network's (auto: by type)
    gamma: float = 1.0  # sampler: 1 = consistency re-noise, 0 = deterministic DDIM-style jumps
    spike_factor: float = 100.0  # 0 disables the spike guard
    spike_warmup: int = 20
    drift_factor: float = 10.0  # 0 disables the drift guard (running tangent norm vs its post-warm-up level)


LOSS_KEYS = ("sigma_data", "p_mean", "p_std", "tangent_norm_c", "guidance_scale", "tangent", "fd_step", "jvp_attention",
             "loss_units")


def _build_scm(cfg: SCMConfig, student: Denoiser, teacher: Denoiser) -> Objective:
    settings = cfg.model_dump(exclude={"name"})
    loss = SCMLoss(**{k: settings.pop(k) for k in LOSS_KEYS})
    return ContinuousConsistencyDistillation(student, teacher, loss, **settings)


def _register() -> None:
    from .registry import register

    register("scm", SCMConfig, _build_scm)


_register()
