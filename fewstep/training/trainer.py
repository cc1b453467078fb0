"""The accelerate trainer every objective runs through.

Owns: one optimiser + LR schedule per trainable network, phases and update ratios
(two-time-scale), gradient accumulation that covers every network, mixed precision,
per-rank RNG streams, an evaluation EMA, logging, sample grids, NaN guards and
atomic checkpoints with exact resume. Objectives own only the math.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..config import OptimizerConfig, RunConfig
from ..models.base import Cond
from ..objectives.base import Batch, Objective
from .checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from .visualize import plot_loss_curves, save_samples


class DivergenceError(RuntimeError):
    """The run diverged and stopped; the checkpoints written before are kept."""


class NonFiniteError(DivergenceError):
    """A loss or gradient became NaN/Inf."""


class RunawayError(DivergenceError):
    """The generator's sample diversity grew past run.max_diversity_growth while every value stayed finite."""


class BatchSource(Protocol):
    """Where training batches come from (toy sampler, data loader + encoders, ...)."""

    def next_batch(self, generator: torch.Generator) -> Batch: ...
    def sample_shape(self) -> tuple[int, ...]: ...
    def sample_conditions(self, n: int) -> Cond | None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    step: int
    run_dir: Path
    last_checkpoint: Path | None
    history: list[dict[str, float]]


def step_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator per (seed, rank, step): ranks draw different noise and times, and a
    resumed run draws exactly what an uninterrupted one would."""
    mixed = int(np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(mixed)


class Trainer:
    def __init__(self, objective: Objective, data: BatchSource, run: RunConfig,
                 optimizers: dict[str, OptimizerConfig], resolved_config: dict[str, Any] | None = None,
                 accelerator: Accelerator | None = None):
        self.objective, self.data, self.run = objective, data, run
        self.run_dir = Path(run.output_dir)
        self.accelerator = accelerator or make_accelerator(run)
        self.networks = objective.trainable_networks()
        missing = sorted(set(self.networks) - set(optimizers))
        if missing:
            raise ValueError(f"config error: optimizers: no settings for network(s) {missing}; "
                             f"add optimizers.{missing[0]}.lr=... "
                             f"(networks of this objective: {sorted(self.networks)})")
        self.objective.to(self.accelerator.device)
        self._build_optimizers(optimizers)
        self.ema = self._build_ema()
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.first_diversity: float | None = None  # the runaway guard's reference (run.max_diversity_growth)
        self._diagnostic_batch: Batch | None = None
        self.history: list[dict[str, float]] = []
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if resolved_config is not None:
                import yaml

                (self.run_dir / "config.yaml").write_text(yaml.safe_dump(resolved_config, sort_keys=False))
        if run.trackers:
            self.accelerator.init_trackers("logs", config=_flat_hparams(resolved_config or {}))

    # ---- setup ----
    def _build_optimizers(self, settings: dict[str, OptimizerConfig]) -> None:
        names = list(self.networks)
        optimizers, schedulers = [], []
        for name in names:
            cfg = settings[name]
            network = self.networks[name]
            params = [p for p in network.parameters() if p.requires_grad]
            if not params:
                raise ValueError(f"network {name!r} has no trainable parameters (frozen, or LoRA not applied)")
            # a network may split its weights into groups at their own lr scale (a fake score's GAN head)
            groups = network.parameter_groups() if hasattr(network, "parameter_groups") else [{"params": params}]
            groups = [{"params": g["params"], "lr": cfg.lr * g.get("lr_scale", 1.0)} for g in groups]
            opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)
            optimizers.append(opt)
            schedulers.append(get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.warmup_steps,
                                            num_training_steps=max(1, self.run.max_steps)))
        prepared = self.accelerator.prepare(*[self.networks[n] for n in names], *optimizers, *schedulers)
        k = len(names)
        self.prepared = dict(zip(names, prepared[:k]))
        self.optimizers = dict(zip(names, prepared[k:2 * k]))
        self.schedulers = dict(zip(names, prepared[2 * k:]))
        for name, module in self.prepared.items():
            if hasattr(self.networks[name], "attach_prepared"):  # Denoisers and discriminators route through DDP
                self.networks[name].attach_prepared(module)

    def _build_ema(self) -> dict[str, EMAModel]:
        if self.run.ema_decay is None:
            return {}
        return {name: EMAModel([p for p in net.parameters() if p.requires_grad], decay=self.run.ema_decay)
                for name, net in self.networks.items()}

    # ---- the loop ----
    def fit(self, resume: str | None = None) -> TrainResult:
        if resume:
            self.load(resume)
        acc = self.accelerator
        bar = tqdm(total=self.run.max_steps, initial=self.step,
                   disable=not (acc.is_main_process and self.run.progress_bar),
                   dynamic_ncols=True, desc="distill")
        pending: dict[str, list[float]] = {}
        started = time.perf_counter()
        while self.step < self.run.max_steps:
            step_started = time.perf_counter()
            generator = step_generator(self.run.seed, acc.process_index, self.step, acc.device)
            logs: dict[str, torch.Tensor] = {}
            for phase in self.objective.phases():
                for _ in range(phase.repeats):
                    logs.update(self._update(phase.name, phase.network, generator))
            for scheduler in self.schedulers.values():  # lr follows the training step, not each network's updates
                scheduler.step()
            self.step += 1
            for name, ema in self.ema.items():
                ema.step([p for p in self.networks[name].parameters() if p.requires_grad])
            row = {k: float(v) for k, v in logs.items()}
            if "diversity" in row:
                self._check_runaway(row["diversity"])
            row.update({f"lr/{n}": s.get_last_lr()[0] for n, s in self.schedulers.items()})
            row["time/step_seconds"] = time.perf_counter() - step_started  # float(v) above waited for the device
            if acc.device.type == "cuda":
                row["memory/peak_gib"] = torch.cuda.max_memory_allocated(acc.device) / 2 ** 30
            self._record(row)
            for k, v in row.items():
                pending.setdefault(k, []).append(v)
            bar.update(1)
            if self.step % self.run.log_every == 0 or self.step == self.run.max_steps:
                means = {k: sum(v) / len(v) for k, v in pending.items()}
                acc.log(means, step=self.step)
                bar.set_postfix({k.split("/")[-1] if k.startswith("lr/") else k: f"{v:.4g}" for k, v in means.items()
                                 if not k.startswith(("time/", "memory/"))})  # the bar shows its own rate
                pending.clear()
            if self.run.sample_every and self.step % self.run.sample_every == 0:
                self.save_samples()
            if self.run.checkpoint_every and self.step % self.run.checkpoint_every == 0:
                self.save()
        bar.close()
        if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"{self.step:08d}"):
            self.save()
        self.save_samples()
        if acc.is_main_process and (self.run_dir / "metrics.jsonl").is_file():
            plot_loss_curves(self.run_dir / "metrics.jsonl", self.run_dir / "loss_curves.png")
        acc.end_training()
        elapsed = time.perf_counter() - started
        if acc.is_main_process:
            acc.print(f"done: {self.step} steps in {elapsed:.1f} s; run dir {self.run_dir}")
        return TrainResult(self.step, self.run_dir, self.last_checkpoint, self.history)

    def _update(self, phase: str, network: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One optimiser step of `network`, accumulating over micro-batches; DDP syncs only on the last."""
        acc, accum = self.accelerator, self.run.gradient_accumulation_steps
        model, optimizer = self.prepared[network], self.optimizers[network]
        optimizer.zero_grad(set_to_none=True)
        logs: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = self.data.next_batch(generator)
            if self._diagnostic_batch is None:
                self._diagnostic_batch = batch  # kept for diagnostics grids without moving the data position
            sync = micro == accum - 1
            with (contextlib.nullcontext() if sync else acc.no_sync(model)), acc.autocast():
                loss, micro_logs = self.objective.loss(phase, batch, generator)
            self._check_finite(phase, {f"{phase}/loss": loss.detach(), **micro_logs})
            acc.backward(loss / accum)
            for k, v in micro_logs.items():
                logs[k] = logs.get(k, 0) + v.detach().float() / accum
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = acc.clip_grad_norm_(params, self.run.max_grad_norm or math.inf)
        self._check_finite(phase, {f"grad_norm/{network}": torch.as_tensor(grad_norm)})
        optimizer.step()
        self.objective.after_update(phase)
        logs[f"grad_norm/{network}"] = torch.as_tensor(grad_norm).detach().float()
        return logs

    def _check_finite(self, phase: str, values: dict[str, torch.Tensor]) -> None:
        bad = {k: float(v) for k, v in values.items() if not bool(torch.isfinite(torch.as_tensor(v)).all())}
        if bad:
            raise NonFiniteError(f"non-finite values at step {self.step + 1}, phase '{phase}': {bad}. "
                                 f"Training stopped; {self._checkpoint_note('last good checkpoint')}. "
                                 f"Hint: {self.objective.divergence_hint}")

    def _check_runaway(self, diversity: float) -> None:
        growth = self.run.max_diversity_growth
        if growth is None:
            return
        if self.accelerator.num_processes > 1:  # every rank takes the same decision
            diversity = float(self.accelerator.reduce(torch.tensor(diversity, device=self.accelerator.device), "mean"))
        if self.first_diversity is None:
            self.first_diversity = diversity
        # a generator that starts collapsed (the data mean) legitimately grows from ~0 to the data's spread (~1)
        limit = growth * max(1.0, self.first_diversity)
        if diversity > limit:
            raise RunawayError(
                f"sample diversity {diversity:.4g} at step {self.step} passed run.max_diversity_growth={growth} x "
                f"max(1, its first value {self.first_diversity:.4g}): the generator's samples are spreading without "
                "bound (the loss can stay finite while they do). "
                f"Training stopped; {self._checkpoint_note('last checkpoint')}; the "
                f"diversity of every step is in {self.run_dir / 'metrics.jsonl'}. Hint: "
                f"{self.objective.divergence_hint}; or raise run.max_diversity_growth")

    def _checkpoint_note(self, label: str) -> str:
        if self.last_checkpoint is None:
            return f"{label}: none yet (no checkpoint was written)"
        return f"{label}: {self.last_checkpoint} (continue with --resume latest)"

    def _record(self, row: dict[str, float]) -> None:
        row = {"step": self.step, **row}
        self.history.append(row)
        if self.accelerator.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    # ---- samples ----
    @torch.no_grad()
    def save_samples(self) -> list[Path]:
        acc = self.accelerator
        if not acc.is_main_process or self.run.num_samples <= 0:
            return []
        shape = self._sample_shape()
        generator = torch.Generator(device=acc.device).manual_seed(self.run.seed)
        noise = torch.randn((self.run.num_samples, *shape), generator=generator, device=acc.device)
        cond = self.data.sample_conditions(self.run.num_samples)
        paths = []
        with self._ema_weights():
            for steps in self.run.sample_steps:
                x = self.objective.sample(noise, steps, cond,
                                          torch.Generator(device=acc.device).manual_seed(self.run.seed + 1))
                paths.append(save_samples(x.float().cpu(),
                                          self.run_dir / "samples" / f"step{self.step:08d}_{steps}step.png",
                                          title=f"step {self.step}, {steps}-step"))
            if hasattr(self.objective, "diagnostics") and self._diagnostic_batch is not None:
                # e.g. DMD: generator output next to real- and fake-score x0 predictions at the same noise
                images = self.objective.diagnostics(self._diagnostic_batch,
                                                    torch.Generator(device=acc.device).manual_seed(self.run.seed))
                for name, x in images.items():
                    if x.ndim == 4:
                        paths.append(save_samples(x.float().cpu(),
                                                  self.run_dir / "samples" / f"step{self.step:08d}_diag_{name}.png"))
        return paths

    def _sample_shape(self) -> tuple[int, ...]:
        return tuple(self.data.sample_shape())

    @contextlib.contextmanager
    def _ema_weights(self):
        """Swap the evaluation EMA into the networks for sampling, then restore."""
        for name, ema in self.ema.items():
            params = [p for p in self.networks[name].parameters() if p.requires_grad]
            ema.store(params)
            ema.copy_to(params)
        try:
            yield
        finally:
            for name, ema in self.ema.items():
                ema.restore([p for p in self.networks[name].parameters() if p.requires_grad])

    # ---- checkpoints ----
    def save(self) -> Path:
        tensors = {"objective_state": self.objective.extra_state()}
        ema_meta = {}
        for name, ema in self.ema.items():
            tensors[f"ema_{name}"] = {str(i): p for i, p in enumerate(ema.shadow_params)}
            ema_meta[name] = {"optimization_step": ema.optimization_step, "decay": ema.decay}
        trainer_state = {"step": self.step, "ema": ema_meta, "seed": self.run.seed,
                         "world_size": self.accelerator.num_processes, "networks": list(self.prepared),
                         "first_diversity": self.first_diversity}
        self.last_checkpoint = save_checkpoint(self.accelerator, self.run_dir, self.step, trainer_state, tensors,
                                               self.data.state_dict(), self.run.keep_checkpoints)
        return self.last_checkpoint

    def load(self, which: str) -> None:
        path = resolve_checkpoint(self.run_dir, which)
        trainer_state, tensors, data_state = load_checkpoint(self.accelerator, path)
        if trainer_state.get("world_size") not in (None, self.accelerator.num_processes):
            self.accelerator.print(f"warning: resuming a {trainer_state['world_size']}-process run with "
                                   f"{self.accelerator.num_processes} processes; data positions restart per rank")
        self.step = int(trainer_state["step"])
        self.first_diversity = trainer_state.get("first_diversity")
        self.objective.load_extra_state({k: v.to(self.accelerator.device)
                                         for k, v in tensors.get("objective_state", {}).items()})
        for name, ema in self.ema.items():
            saved = tensors.get(f"ema_{name}")
            if saved is None:
                raise ValueError(f"checkpoint {path} has no EMA for {name!r}; set run.ema_decay as in the original run")
            for i, p in enumerate(ema.shadow_params):
                p.data.copy_(saved[str(i)])
            ema.optimization_step = trainer_state["ema"][name]["optimization_step"]
        if data_state:
            self.data.load_state_dict(data_state)
        self.last_checkpoint = path
        self.accelerator.print(f"resumed from {path} at step {self.step}")


def make_accelerator(run: RunConfig) -> Accelerator:
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=run.find_unused_parameters)]
    project = ProjectConfiguration(project_dir=run.output_dir, logging_dir=str(Path(run.output_dir) / "logs"))
    # step_scheduler_with_optimizer=False: the trainer steps each schedule once per training step (fit); accelerate's
    # default would advance it num_processes times per call
    return Accelerator(mixed_precision=run.mixed_precision, log_with=list(run.trackers) or None,
                       project_config=project, kwargs_handlers=kwargs, step_scheduler_with_optimizer=False)


def _flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """TensorBoard hparams take scalars only."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out
