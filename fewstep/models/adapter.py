"""Shared plumbing for Denoisers that wrap a diffusers network.

Each family adapter only says how (x_t, model timestep, cond) become the network's keyword arguments;
dtype casting, timestep broadcasting, stored null conditionings and feature-tap reshaping live here so
the six adapters stay a page each.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..diffusion import GaussianPath
from .base import Cond, Denoiser


class DiffusersDenoiser(Denoiser):
    """A Denoiser around `self.model`, a diffusers ModelMixin.

    Subclasses set `cond_keys` (accepted conditioning), `required_keys`, `text_keys` (replaced by the
    stored empty-prompt embeddings in `null_cond`) and `embedding_keys` (cast to the model dtype;
    everything time-like — guidance, SDXL time_ids, FLUX position ids — stays in fp32).
    """

    kind: str = "diffusers"
    cond_keys: frozenset[str] = frozenset()
    required_keys: frozenset[str] = frozenset()
    text_keys: frozenset[str] = frozenset()
    embedding_keys: frozenset[str] = frozenset()

    def __init__(self, model: nn.Module, path: GaussianPath, prediction_type: str):
        super().__init__(path, prediction_type)
        self.model = model
        self._null_keys: list[str] = []
        self._token_grid: tuple[int, int] | None = None

    @classmethod
    def from_pretrained(cls, pretrained: str, subfolder: str | None = None, dtype: torch.dtype | None = None,
                        **kwargs: Any) -> "DiffusersDenoiser":
        """This family's network from a pipeline folder / hub id, path from its scheduler config
        (see fewstep.models.registry.load_denoiser for the arguments)."""
        from .registry import load_denoiser

        return load_denoiser(cls.kind, pretrained, subfolder=subfolder, dtype=dtype, **kwargs)

    # ---- dtype / time helpers ----
    @property
    def model_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def model_time(self, t: Tensor, x_t: Tensor) -> Tensor:
        """Path time -> the network's `timestep` input: (B,) fp32, or fp64 for an fp64 model (exact tests)."""
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({x_t.shape[0]},) to match x_t; got {tuple(t.shape)}")
        t = t if t.dtype == torch.float64 else t.float()
        time_dtype = torch.float64 if self.model_dtype == torch.float64 else torch.float32
        return self.path.model_timestep(t).to(time_dtype)

    def prepare_cond(self, cond: Cond | None) -> Cond:
        """Validate keys and cast embeddings to the model dtype."""
        cond = dict(cond or {})
        unknown = set(cond) - self.cond_keys
        if unknown:
            raise KeyError(f"{type(self).__name__} got unknown cond keys {sorted(unknown)}; "
                           f"accepted: {sorted(self.cond_keys)}")
        missing = self.required_keys - set(cond)
        if missing:
            raise KeyError(f"{type(self).__name__} needs cond keys {sorted(missing)} (got {sorted(cond)}); "
                           "build them with the family's text conditioner in fewstep.models.encoders")
        dtype = self.model_dtype
        return {k: v.to(dtype) if k in self.embedding_keys else v for k, v in cond.items()}

    # ---- classifier-free guidance: empty-prompt embeddings supplied by the encoder side ----
    def set_null_cond(self, null: Mapping[str, Tensor]) -> None:
        """Store the unconditional embeddings (batch 1), e.g. `conditioner.null_cond()`.

        Never computed here: the empty prompt must go through the same text encoder as the prompts.
        Stored as non-persistent buffers so `.to(device)` moves them and checkpoints don't carry them.
        """
        if not self.text_keys:
            raise TypeError(f"{type(self).__name__} has no text conditioning; its null_cond needs no embeddings")
        keys = set(null)
        if not keys or not keys <= self.text_keys:
            raise KeyError(f"null cond keys must be a non-empty subset of {sorted(self.text_keys)}; got {sorted(keys)}")
        for key, value in null.items():
            if value.shape[0] != 1:
                raise ValueError(f"null cond {key!r} must have batch size 1 (the empty prompt); "
                                 f"got shape {tuple(value.shape)}")
            self.register_buffer(f"null_{key}", value.detach().clone(), persistent=False)
        self._null_keys = sorted(keys)

    def null_cond(self, cond: Cond) -> Cond:
        """`cond` with its text embeddings replaced by the stored empty-prompt ones (other keys kept)."""
        if not self.text_keys:
            return super().null_cond(cond)  # no text conditioning: Denoiser's "no unconditional branch" error
        if not self._null_keys:
            raise RuntimeError(f"{type(self).__name__}.null_cond: no empty-prompt embeddings stored; call "
                               "denoiser.set_null_cond(conditioner.null_cond()) before using guidance_scale != 1")
        batch = _batch_size(cond, self._null_keys)
        out = dict(cond)
        for key in self._null_keys:
            null = getattr(self, f"null_{key}")
            ref = cond.get(key)
            null = null.to(device=ref.device, dtype=ref.dtype) if ref is not None else null
            out[key] = null.expand(batch, *null.shape[1:])
        return out

    # ---- training conveniences ----
    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward (diffusers' own per-block checkpointing)."""
        self.model.enable_gradient_checkpointing()

    # ---- feature taps on token sequences ----
    def tokens_to_grid(self, tokens: Tensor) -> Tensor:
        """(B, N, D) image tokens -> (B, D, h, w) on the patch grid of the last forward."""
        if self._token_grid is None:
            raise RuntimeError("feature taps are filled during a forward; call the denoiser inside the taps block")
        h, w = self._token_grid
        if tokens.ndim != 3 or tokens.shape[1] != h * w:
            raise ValueError(f"expected (B, {h * w}, D) image tokens, got {tuple(tokens.shape)}")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def _batch_size(cond: Mapping[str, Tensor], keys: Iterable[str]) -> int:
    for key in keys:
        if key in cond:
            return cond[key].shape[0]
    raise KeyError(f"cannot infer the batch size: cond has none of {sorted(keys)}")
