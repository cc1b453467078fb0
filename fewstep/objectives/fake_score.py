"""The fake score: a denoiser of the generator's own distribution (DMD §3.2, DMD2, SiD, VSD).

Initialised as the teacher and trained with denoising score matching on generator samples, it
estimates the score of p_fake so that (fake - real) points from the data distribution towards the
generator's. Two memory layouts:

* copy: a full trainable copy of the teacher (fp32 even when the teacher is bf16);
* lora: a LoRA adapter named "fake_score" on the frozen teacher itself. The teacher's LoRA layers
  are kept disabled, so every other caller still sees the pure teacher (the real score); only the
  fake score's forward routes through the adapter. No second copy of the network exists.

An optional discriminator head (fewstep.objectives.gan) reads one feature tap of the fake score's
forward (DMD2 §4.3), so one forward gives both the denoising prediction and a GAN logit.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import Tensor, nn

from ..diffusion import from_x0_eps
from ..models.base import Cond, Denoiser
from ..toy import GaussianMixtureDenoiser, ToyStudent
from .gan import DiscriminatorHead, default_tap, feature_channels

FAKE_ADAPTER = "fake_score"


def peft_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def active_adapter(model: nn.Module, name: str | None) -> Iterator[None]:
    """Inside the block, peft LoRA layers of `model` use adapter `name` only (None: the base weights).

    Flips the layers' flags directly: peft's enable_adapters / set_adapter (and diffusers'
    disable_adapters, which calls them) also flip requires_grad, which would drop the adapter from
    the optimiser the trainer already built. Not safe under gradient checkpointing of `model`
    (recomputation would run outside the block); callers refuse that combination.
    """
    layers = peft_layers(model)
    saved = [(layer._disable_adapters, layer._active_adapter) for layer in layers]
    try:
        for layer in layers:
            layer._disable_adapters = name is None
            if name is not None:
                layer._active_adapter = [name]
        yield
    finally:
        for layer, (disabled, active) in zip(layers, saved):
            layer._disable_adapters, layer._active_adapter = disabled, active


def set_adapters_disabled(model: nn.Module) -> None:
    """Default state outside active_adapter blocks: base weights only."""
    for layer in peft_layers(model):
        layer._disable_adapters = True


class FakeScore(Denoiser):
    """A trainable denoiser of p_fake with the teacher's path, parameterisation and conditioning."""

    def __init__(self, network: Denoiser, adapter: str | None = None):
        super().__init__(network.path, network.prediction_type)
        self.adapter = adapter
        if adapter is None:
            self.network = network
        else:  # LoRA on the frozen teacher: hold the teacher unregistered, register only the adapter weights
            self.__dict__["network"] = network
            self.adapter_parameters = nn.ParameterList(
                [p for n, p in network.named_parameters() if f".{adapter}." in n and "lora_" in n])
            if not len(self.adapter_parameters):
                raise ValueError(f"no LoRA weights named {adapter!r} on {type(network).__name__}")
        self.head: DiscriminatorHead | None = None
        self.tap: str | None = None

    # ---- construction ----
    @classmethod
    def copy_of(cls, teacher: Denoiser, student: Denoiser) -> "FakeScore":
        """A full trainable fp32 copy of the teacher (toy: of the freshly built student, which equals
        the exact teacher and, unlike it, has weights)."""
        source = student if isinstance(teacher, GaussianMixtureDenoiser) else teacher
        network = copy.deepcopy(source).requires_grad_(True)
        network.attach_prepared(None)
        if any(p.dtype in (torch.float16, torch.bfloat16) for p in network.parameters()):
            network = network.float()
        student_model = getattr(student, "model", None)
        if (getattr(student_model, "is_gradient_checkpointing", False)
                and hasattr(network, "enable_gradient_checkpointing")):
            network.enable_gradient_checkpointing()
        return cls(network)

    @classmethod
    def lora_on(cls, teacher: Denoiser, rank: int = 16, alpha: float | None = None,
                target_modules: list[str] | None = None) -> "FakeScore":
        """A LoRA adapter on the teacher's own network; the teacher keeps answering as the real score."""
        from ..config import ConfigError
        from ..models.lora import add_lora

        if not isinstance(getattr(teacher, "model", None), nn.Module):
            raise ConfigError(f"config error: objective.fake_score.mode: 'lora' needs a diffusers teacher; "
                              f"{type(teacher).__name__} has no network to adapt (use mode: copy)")
        if getattr(teacher.model, "is_gradient_checkpointing", False):
            raise ConfigError("config error: objective.fake_score.mode: 'lora' cannot be combined with gradient "
                              "checkpointing of the teacher (the adapter is switched per call); use mode: copy")
        add_lora(teacher, rank=rank, alpha=float(alpha if alpha is not None else rank),
                 target_modules=target_modules, adapter_name=FAKE_ADAPTER)
        set_adapters_disabled(teacher.model)
        return cls(teacher, adapter=FAKE_ADAPTER)

    def add_discriminator(self, tap: str | None = None, channels: int | None = None,
                          lr_scale: float = 1.0) -> "FakeScore":
        """Attach a GAN classifier head on the output of feature tap `tap` (default: the bottleneck), trained at
        lr_scale x the fake score's learning rate."""
        self.head_lr_scale = lr_scale
        modules = self.tap_modules()
        self.tap = tap or default_tap(list(modules))
        if self.tap not in modules:
            raise KeyError(f"unknown feature tap {self.tap!r}; available: {sorted(modules)}")
        width = channels or feature_channels(modules[self.tap])
        device = next(self.parameters()).device
        self.head = DiscriminatorHead(width, spatial=not isinstance(self.network, ToyStudent)).to(device)
        return self

    def parameter_groups(self) -> list[dict]:
        """Optimiser groups for the trainer: the denoiser's trainable weights, and the head at its lr scale."""
        head = {id(p) for p in self.head.parameters()} if self.head is not None else set()
        groups = [{"params": [p for p in self.parameters() if p.requires_grad and id(p) not in head]}]
        if self.head is not None:
            groups.append({"params": list(self.head.parameters()), "lr_scale": self.head_lr_scale})
        return groups

    # ---- forward ----
    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        if self.adapter is None:
            return self.network(x_t, t, cond)
        with active_adapter(self.network.model, self.adapter):
            return self.network(x_t, t, cond)

    def null_cond(self, cond: Cond) -> Cond:
        return self.network.null_cond(cond)

    def tap_modules(self) -> dict[str, nn.Module]:
        taps = self.network.tap_modules()
        if not taps and isinstance(self.network, ToyStudent):
            taps = {"trunk": self.network.trunk[-2]}  # the toy MLP's last hidden layer
        return taps

    def tap_value(self, name: str, output: object) -> Tensor:
        return self.network.tap_value(name, output)

    def forward_with_logits(self, x_t: Tensor, t: Tensor, cond: Cond | None, wrapped: bool = True,
                            guidance_scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """(native prediction, discriminator logits) from one forward (with CFG: one fused cond + uncond
        forward, the logits from its conditional half).

        wrapped=False skips the DDP wrapper: for the generator's GAN term, whose backward must not count
        as a fake-score update (the fake score's gradients from it are discarded by its next zero_grad).
        """
        if self.head is None:
            raise RuntimeError("no discriminator head; call add_discriminator() first")
        with self.feature_taps([self.tap]) as features, (contextlib.nullcontext() if wrapped else self.unwrapped()):  # type: ignore[list-item]
            raw = self.guided(x_t, t, cond, guidance_scale)
        return raw, self.head(features[self.tap][: x_t.shape[0]])  # type: ignore[index]

    # ---- training ----
    def denoising_loss(self, x0: Tensor, noise: Tensor, t: Tensor, cond: Cond | None,
                       with_logits: bool = False, guidance_scale: float = 1.0) -> tuple[Tensor, Tensor | None]:
        """Denoising score matching on samples x0 of p_fake (DMD Eq. 6), in the network's native
        parameterisation, i.e. with the teacher's own training weighting. Optionally the GAN logits
        of the same noisy input. guidance_scale != 1 regresses the guided output (SiD-LSG's kappa_1)."""
        x_t = self.path.add_noise(x0, noise, t)
        if with_logits:
            raw, logits = self.forward_with_logits(x_t, t, cond, guidance_scale=guidance_scale)
        else:
            raw, logits = self.guided(x_t, t, cond, guidance_scale), None
        target = from_x0_eps(x0, noise, self.prediction_type, t, self.path)
        return (raw.float() - target.float()).pow(2).mean(), logits


def build_fake_score(teacher: Denoiser, student: Denoiser, mode: str = "copy", lora_rank: int = 16,
                     lora_alpha: float | None = None, lora_target_modules: list[str] | None = None,
                     gan: bool = False, gan_tap: str | None = None, gan_channels: int | None = None,
                     gan_head_lr_scale: float = 1.0) -> FakeScore:
    if mode == "copy":
        fake = FakeScore.copy_of(teacher, student)
    elif mode == "lora":
        fake = FakeScore.lora_on(teacher, lora_rank, lora_alpha, lora_target_modules)
    else:
        raise ValueError(f"unknown fake score mode {mode!r}; expected 'copy' or 'lora'")
    return fake.add_discriminator(gan_tap, gan_channels, gan_head_lr_scale) if gan else fake
