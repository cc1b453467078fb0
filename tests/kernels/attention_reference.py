"""Independent float64 references: explicit softmax attention, differentiated by PyTorch autograd."""

from __future__ import annotations

import torch
from torch import Tensor


def reference_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None,
                        scale: float | None = None) -> tuple[Tensor, Tensor]:
    """(o, lse) in float64 from the textbook formula: S = scale·QKᵀ + bias, O = softmax(S) V."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        s = s + bias.double()
    return torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1)


def reference_jvp(q: Tensor, k: Tensor, v: Tensor, tangents: tuple[Tensor, Tensor, Tensor], bias: Tensor | None = None,
                  scale: float | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(o, lse, tO, tLSE) by forward-mode autodiff of the float64 reference."""
    (o, lse), (to, tlse) = torch.func.jvp(lambda a, b, c: reference_attention(a, b, c, bias, scale),
                                          (q.double(), k.double(), v.double()), tuple(t.double() for t in tangents))
    return o, lse, to, tlse


def reference_grads(q: Tensor, k: Tensor, v: Tensor, do: Tensor, dlse: Tensor | None, bias: Tensor | None = None,
                    scale: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of <o, do> + <lse, dlse> by reverse-mode autodiff of the float64 reference."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    o, lse = reference_attention(q, k, v, bias, scale)
    loss = (o * do.double()).sum() + ((lse * dlse.double()).sum() if dlse is not None else 0.0)
    return torch.autograd.grad(loss, (q, k, v))


def rel_err(x: Tensor, ref: Tensor) -> float:
    """max |x − ref| / max |ref|: one number comparable across dtypes and shapes."""
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
