"""The one interface every network is used through: (x_t, t, cond) -> prediction.

A Denoiser declares its Gaussian path and the parameterisation of its raw output; callers
ask for whatever they need (`predict(..., target="sample")`), with classifier-free guidance
computed in one fused batch. Objectives never special-case the model family.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from ..diffusion import GaussianPath, convert_prediction, to_x0_eps
from ..diffusion.solvers import DenoiseFn

Cond = dict[str, Tensor]


def cat_conds(first: Mapping[str, Tensor], second: Mapping[str, Tensor]) -> Cond:
    """Stack two conditionings along the batch (CFG's fused batch).

    Tensors that are not batched (e.g. FLUX's (seq, 3) position ids) must be equal and are kept once.
    """
    if first.keys() != second.keys():
        raise ValueError(f"conditionings have different keys: {sorted(first)} vs {sorted(second)}")
    out: Cond = {}
    for key, a in first.items():
        b = second[key]
        if key in NON_BATCHED_COND_KEYS:
            out[key] = a
        else:
            out[key] = torch.cat([a, b])
    return out


# Conditioning entries shared by every sample of a batch rather than stacked per sample.
NON_BATCHED_COND_KEYS = frozenset({"img_ids", "txt_ids"})


class PreparedRouting:
    """Mixin for trained modules whose helper methods call their own forward: those calls go through the
    wrapper accelerator.prepare returned (DDP/FSDP), which the trainer records with `attach_prepared`.

    DDP only synchronises gradients of forwards that go through the wrapper, while helpers (Denoiser.guided,
    FeatureDiscriminator.call, ...) live on the unwrapped module; this routes them.
    """

    def attach_prepared(self, prepared: nn.Module | None) -> None:
        """Record the wrapper returned by accelerator.prepare (None or self to detach)."""
        self.__dict__["_prepared_module"] = None if prepared is self else prepared

    def through_prepared(self, *args: Any) -> Any:
        """self(*args), through the prepared wrapper when there is one."""
        prepared = self.__dict__.get("_prepared_module")
        return (prepared or self)(*args)  # type: ignore[operator]


class Denoiser(PreparedRouting, nn.Module):
    """Base class. Subclasses implement `forward(x_t, t, cond)` returning the native prediction."""

    def __init__(self, path: GaussianPath, prediction_type: str):
        super().__init__()
        self.path = path
        self.prediction_type = prediction_type

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def call_network(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        """Run forward through the accelerate-prepared wrapper (DDP/FSDP) when there is one (PreparedRouting)."""
        return self.through_prepared(x_t, t, cond)

    @contextlib.contextmanager
    def unwrapped(self) -> Iterator[None]:
        """Inside the block, calls skip the DDP wrapper: for forwards whose backward must not count as an
        update of this network (its gradients from them are discarded by its next zero_grad)."""
        saved = self.__dict__.get("_prepared_module")
        self.__dict__["_prepared_module"] = None
        try:
            yield
        finally:
            self.__dict__["_prepared_module"] = saved

    def null_cond(self, cond: Cond) -> Cond:
        """The unconditional counterpart of `cond` (null class, empty-prompt embeddings)."""
        raise NotImplementedError(f"{type(self).__name__} has no unconditional branch; "
                                  "classifier-free guidance needs one")

    def guided(self, x_t: Tensor, t: Tensor, cond: Cond | None, guidance_scale: float | Tensor = 1.0,
               null_cond: Cond | None = None) -> Tensor:
        """Native prediction with CFG: u + w (c - u), conditional and unconditional in one batch.

        Every parameterisation is affine in (x0, eps) for fixed x_t, so guiding the native output
        equals guiding x0 or eps. `guidance_scale` may be a per-sample (B,) tensor (LCM's w).
        """
        scalar = not torch.is_tensor(guidance_scale)
        if cond is None or (scalar and float(guidance_scale) == 1.0):
            return self.call_network(x_t, t, cond)
        uncond = null_cond if null_cond is not None else self.null_cond(cond)
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        both = self.call_network(torch.cat([x_t, x_t]), torch.cat([t, t]), cat_conds(cond, uncond))
        pred_cond, pred_uncond = both.chunk(2)
        w = (guidance_scale if scalar
             else torch.as_tensor(guidance_scale).reshape(-1, *([1] * (x_t.ndim - 1))).to(pred_cond))
        return pred_uncond + w * (pred_cond - pred_uncond)

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond | None = None, *, target: str = "sample",
                guidance_scale: float | Tensor = 1.0, null_cond: Cond | None = None) -> Tensor:
        raw = self.guided(x_t, t, cond, guidance_scale, null_cond)
        return convert_prediction(raw, self.prediction_type, target, x_t, t, self.path)

    def x0_eps(self, x_t: Tensor, t: Tensor, cond: Cond | None = None, guidance_scale: float | Tensor = 1.0,
               null_cond: Cond | None = None) -> tuple[Tensor, Tensor]:
        raw = self.guided(x_t, t, cond, guidance_scale, null_cond)
        return to_x0_eps(raw, self.prediction_type, x_t, t, self.path)

    def denoise_fn(self, cond: Cond | None = None, guidance_scale: float | Tensor = 1.0,
                   null_cond: Cond | None = None) -> DenoiseFn:
        """(x_t, t) -> (x0, eps) closure for the solvers in fewstep.diffusion."""
        return lambda x_t, t: self.x0_eps(x_t, t, cond, guidance_scale, null_cond)

    # ---- feature taps (GAN / LADD discriminator heads) ----
    def tap_modules(self) -> dict[str, nn.Module]:
        """Named sub-modules whose outputs are useful features (override per family)."""
        return {}

    def tap_value(self, name: str, output: object) -> Tensor:
        """The feature a tap records from its module's raw output.

        Default: first element of a tuple (UNet blocks return (hidden, residuals)) or `.sample`.
        Families whose blocks return (encoder_hidden, hidden) or token sequences override this.
        """
        return output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)

    @contextlib.contextmanager
    def feature_taps(self, names: list[str] | None = None) -> Iterator[dict[str, Tensor]]:
        """Capture intermediate activations during forwards inside the block.

        with denoiser.feature_taps(["mid"]) as feats: denoiser(x, t, c)  ->  feats["mid"]
        """
        modules = self.tap_modules()
        names = list(modules) if names is None else names
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise KeyError(f"unknown feature taps {unknown}; available: {sorted(modules)}")
        captured: dict[str, Tensor] = {}
        handles = []
        for name in names:
            def hook(_module: nn.Module, _inp: object, out: object, name: str = name) -> None:
                captured[name] = self.tap_value(name, out)
            handles.append(modules[name].register_forward_hook(hook))
        try:
            yield captured
        finally:
            for h in handles:
                h.remove()
