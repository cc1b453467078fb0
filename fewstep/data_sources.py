"""Batch sources the trainer draws from: the toy distribution, synthetic tensors, and the
dataset loaders of fewstep.data (images, captions, cached latents)."""

from __future__ import annotations

from typing import Any

import torch

from .config import DATA_CONFIGS, SyntheticDataConfig, ToyDataConfig
from .models.base import Cond
from .objectives.base import Batch
from .toy import GaussianMixture


class ToySource:
    """Fresh samples from the analytic mixture (class-conditional when the mixture has classes)."""

    def __init__(self, mixture: GaussianMixture, cfg: ToyDataConfig, device: torch.device | str = "cpu"):
        self.mixture, self.batch_size, self.device = mixture, cfg.batch_size, torch.device(device)

    def next_batch(self, generator: torch.Generator) -> Batch:
        cpu_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator,
                                                                  device=generator.device)))
        labels = None
        if self.mixture.num_classes:
            labels = torch.randint(0, self.mixture.num_classes, (self.batch_size,), generator=cpu_gen)
        x0 = self.mixture.sample(self.batch_size, cpu_gen, labels).to(self.device)
        return Batch(x0, None if labels is None else {"class_labels": labels.to(self.device)})

    def sample_shape(self) -> tuple[int, ...]:
        return self.mixture.event_shape

    def sample_conditions(self, n: int) -> Cond | None:
        if not self.mixture.num_classes:
            return None
        return {"class_labels": (torch.arange(n) % self.mixture.num_classes).to(self.device)}

    def state_dict(self) -> dict[str, Any]:
        return {}  # all randomness comes from the per-step generator

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class SyntheticSource:
    """Random images in [-1, 1] with optional labels / prompt conditioning, for smoke runs of real architectures."""

    def __init__(self, cfg: SyntheticDataConfig, encode: Any = None, device: torch.device | str = "cpu"):
        self.cfg, self.encode, self.device = cfg, encode, torch.device(device)

    def _cond(self, n: int, generator: torch.Generator | None) -> Cond | None:
        if self.cfg.num_classes:
            labels = (torch.randint(0, self.cfg.num_classes, (n,), generator=generator, device=generator.device)
                      if generator is not None else torch.arange(n) % self.cfg.num_classes)
            return {"class_labels": labels.to(self.device)}
        if self.cfg.prompts:
            if self.encode is None:
                raise ValueError("data.prompts needs a text encoder for this model family")
            picks = [self.cfg.prompts[i % len(self.cfg.prompts)] for i in range(n)]
            return {k: v.to(self.device) for k, v in self.encode(picks).items()}
        return None

    def next_batch(self, generator: torch.Generator) -> Batch:
        x0 = torch.rand((self.cfg.batch_size, *self.cfg.shape), generator=generator, device=generator.device) * 2 - 1
        return Batch(x0.to(self.device), self._cond(self.cfg.batch_size, generator))

    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.cfg.shape)

    def sample_conditions(self, n: int) -> Cond | None:
        return self._cond(n, None)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class LoaderSource:
    """Batches from fewstep.data loaders (images, class folders, captions, cached latents) as Batch objects.

    Clean data is "pixel_values" (pixel-space teachers) or "latents" (a latent cache); conditioning is
    class labels, cached text embeddings, or prompts encoded by the teacher's frozen text encoders.
    """

    COND_KEYS = ("encoder_hidden_states", "pooled_projections", "text_embeds", "time_ids", "encoder_attention_mask")

    def __init__(self, loader: Any, text_encoder: Any, device: torch.device):
        self.loader = loader
        self.text_encoder, self.device = text_encoder, device
        self._iterator = None
        self._last: Batch | None = None

    def _to_batch(self, raw: dict[str, Any]) -> Batch:
        x0 = raw.get("latents", raw.get("pixel_values"))
        if x0 is None:
            raise ValueError(f"a training batch needs 'pixel_values' or 'latents'; this data kind gives {sorted(raw)} "
                             "(prompt-only data is for data-free objectives)")
        cond: Cond = {k: raw[k].to(self.device) for k in self.COND_KEYS if k in raw}
        if "class_labels" in raw:
            cond["class_labels"] = raw["class_labels"].to(self.device)
        if not cond and "prompt" in raw:
            if self.text_encoder is None:
                raise ValueError("prompts in the data but this teacher has no text encoder; use a text-conditional "
                                 "model kind, or cache text embeddings with `fewstep cache`")
            cond = {k: v.to(self.device) for k, v in self.text_encoder(list(raw["prompt"])).items()}
        return Batch(x0.to(self.device), cond or None)

    def next_batch(self, generator: torch.Generator) -> Batch:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        self._last = self._to_batch(next(self._iterator))
        return self._last

    def sample_shape(self) -> tuple[int, ...]:
        if self._last is None:
            raise RuntimeError("sample_shape() is known after the first batch")
        return tuple(self._last.x0.shape[1:])

    def sample_conditions(self, n: int) -> Cond | None:
        if self._last is None or self._last.cond is None:
            return None
        reps = -(-n // len(self._last))
        return {k: v.repeat_interleave(reps, 0)[:n] if v.shape[0] == len(self._last) else v
                for k, v in self._last.cond.items()}

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._iterator = None
        self.loader.load_state_dict(state)


def build_loader(cfg: Any, rank: int, world_size: int, seed: int) -> Any:
    """A resumable loader for any dataset kind: fewstep.data's, or the bundled Animal-MNIST train split."""
    if cfg.kind == "animal_mnist":
        from .data.animal_mnist import AnimalMNIST
        from .data.loader import ResumableLoader
        from .data.sampling import EpochBatchPlan

        dataset = AnimalMNIST(cfg.split)
        plan = EpochBatchPlan(len(dataset), cfg.batch_size, rank, world_size, seed, shuffle=True)
        return ResumableLoader(dataset, plan, seed, f"animal_mnist {cfg.split}")
    from .data import build_dataloader

    return build_dataloader(cfg, rank, world_size, seed)


def register_data_configs() -> None:
    """Make the dataset kinds of fewstep.data known to config validation."""
    from .data.config import DATA_KINDS, DataConfig

    for kind in DATA_KINDS:
        DATA_CONFIGS.setdefault(kind, DataConfig)
