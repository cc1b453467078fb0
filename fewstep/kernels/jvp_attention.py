"""Softmax attention that torch.func.jvp, forward-AD dual tensors, autograd and torch.compile can
all go through, without materialising the N×N score matrix.

`attention(q, k, v)` takes (B, H, N, D) tensors like `F.scaled_dot_product_attention`. On CUDA with
Triton it runs the flash kernels in `triton_attention`; elsewhere it falls back to PyTorch's MATH
SDPA (forward-AD capable, but O(N²) memory), warning once with the size. The Triton launches are
`torch.library.custom_op`s (opaque to functorch: a raw launch on a functorch TensorWrapper fails with
"Cannot access storage of TensorWrapper") called from an autograd.Function that defines forward,
backward and jvp in setup_context style, and exposed to torch.compile as one opaque node
(`flash_attention`): that combination is what makes all transforms compose. (A custom_op alone is
NOT enough: torch.func.jvp through it silently returns a wrong tangent, since it has no jvp rule.)
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

IMPL_ENV = "FEWSTEP_ATTENTION_IMPL"
IMPLS = ("auto", "triton", "math")
_warned_math: set[str] = set()


def _launch():
    """Import the Triton launchers on first use (TRITON_INTERPRET is read when kernels are decorated)."""
    from . import triton_launch

    return triton_launch


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_impl(device: torch.device, impl: str | None = None) -> str:
    """'triton' or 'math' for tensors on `device`: argument, then $FEWSTEP_ATTENTION_IMPL, then auto.

    auto = Triton on CUDA when it is installed, MATH otherwise. 'triton' on CPU tensors runs the
    same kernels in Triton's interpreter and needs TRITON_INTERPRET=1 (tests only: it is slow).
    """
    choice = (impl or os.environ.get(IMPL_ENV) or "auto").lower()
    if choice not in IMPLS:
        raise ValueError(f"attention impl must be one of {IMPLS}, got {choice!r}")
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "math"
    if choice == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton' needs the triton package (pip install 'fewstep[triton]')")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    return choice


# ---------------------------------------------------------------- custom ops (opaque Triton launches)

@torch.library.custom_op("fewstep::attention_fwd", mutates_args=())
def _attention_fwd(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], scale: float) -> tuple[Tensor, Tensor]:
    return _launch().forward(q, k, v, bias, scale)


@_attention_fwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], scale: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("fewstep::attention_fwd_jvp", mutates_args=())
def _attention_fwd_jvp(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor, bias: Optional[Tensor],
                       scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _launch().forward(q, k, v, bias, scale, (tq, tk, tv))


@_attention_fwd_jvp.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor, bias: Optional[Tensor],
      scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(q), lse, torch.empty_like(lse)


@torch.library.custom_op("fewstep::attention_tangent", mutates_args=())
def _attention_tangent(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor, bias: Optional[Tensor],
                       o: Tensor, lse: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return _launch().tangent(q, k, v, tq, tk, tv, bias, o, lse, scale)


@_attention_tangent.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor, bias: Optional[Tensor], o: Tensor,
      lse: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(lse)


@torch.library.custom_op("fewstep::attention_bwd", mutates_args=())
def _attention_bwd(do: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                   o: Tensor, lse: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return _launch().backward(do, dlse, q, k, v, bias, o, lse, scale)


@_attention_bwd.register_fake
def _(do: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], o: Tensor,
      lse: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))


def _no_double_grad(ctx: object, *grads: Tensor) -> None:
    raise RuntimeError("the attention tangent (tO) is not differentiable: use it as a stop-gradient target "
                       "(as sCM / MeanFlow do; under torch.compile compute the JVP inside torch.no_grad()), "
                       "or use impl='math' for higher-order derivatives")


def _setup_no_double_grad(ctx: object, inputs: tuple, output: object) -> None:
    pass


_attention_tangent.register_autograd(_no_double_grad, setup_context=_setup_no_double_grad)
_attention_fwd_jvp.register_autograd(_no_double_grad, setup_context=_setup_no_double_grad)


class FlashAttentionFunction(torch.autograd.Function):
    """(o, lse) = attention(q, k, v; bias, scale) with Triton forward, backward and jvp.

    jvp reuses the forward's o and lse (exact P, no online rescaling): 2 + 5 matmuls for a
    primal + tangent pass. The bias (mask) is treated as a constant: it gets no gradient or tangent.
    """

    @staticmethod
    def forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
        return torch.ops.fewstep.attention_fwd(q, k, v, bias, scale)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
        q, k, v, bias, scale = inputs
        o, lse = output
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, bias, o, lse)
        ctx.save_for_forward(q, k, v, bias, o, lse)

    @staticmethod
    def backward(ctx, do: Tensor | None, dlse: Tensor | None) -> tuple[Tensor | None, ...]:
        q, k, v, bias, o, lse = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(o)
        dq, dk, dv = torch.ops.fewstep.attention_bwd(do, dlse, q, k, v, bias, o, lse, ctx.scale)
        return dq, dk, dv, None, None

    @staticmethod
    def jvp(ctx, tq: Tensor | None, tk: Tensor | None, tv: Tensor | None, _tbias: object,
            _tscale: object) -> tuple[Tensor, Tensor]:
        q, k, v, bias, o, lse = ctx.saved_tensors
        tq, tk, tv = (torch.zeros_like(x) if t is None else t for t, x in ((tq, q), (tk, k), (tv, v)))
        return torch.ops.fewstep.attention_tangent(q, k, v, tq, tk, tv, bias, o, lse, ctx.scale)


@torch.compiler.allow_in_graph
def flash_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
    """FlashAttentionFunction.apply as one opaque graph node for torch.compile (Dynamo refuses to trace
    autograd.Functions with a custom jvp; AOTAutograd handles them fine, including under jvp)."""
    return FlashAttentionFunction.apply(q, k, v, bias, scale)


# ---------------------------------------------------------------- public API

def mask_to_bias(attn_mask: Tensor | None, q: Tensor, k: Tensor) -> Tensor | None:
    """SDPA-style mask (bool: True = attend, or additive float), broadcastable to (B, H, Nq, Nk),
    as an additive fp32 bias *view* of that shape (stride 0 on broadcast dims: nothing N×N is built
    for a key-padding mask)."""
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, device=q.device).masked_fill(~attn_mask, float("-inf"))
    while attn_mask.ndim < 4:
        attn_mask = attn_mask.unsqueeze(0)
    batch, heads, n_q, _ = q.shape
    return attn_mask.detach().to(q.device).expand(batch, heads, n_q, k.shape[2])


def _warn_math(q: Tensor, k: Tensor) -> None:
    """Once per device type: the fallback works but its memory grows with N², say how much."""
    if q.device.type in _warned_math:
        return
    _warned_math.add(q.device.type)
    mib = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * 4 / 2**20
    reason = "no CUDA device" if q.device.type != "cuda" else "triton is not installed"
    warnings.warn(f"fewstep attention: {reason}, using PyTorch MATH attention, which materialises the B×H×Nq×Nk "
                  f"scores: {mib:.1f} MiB in fp32 for q{tuple(q.shape)} with {k.shape[2]} keys, about 3x that under "
                  f"torch.func.jvp (set {IMPL_ENV}=math to silence)", stacklevel=3)


def math_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, scale: float | None = None,
                   return_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Reference path: PyTorch SDPA pinned to the MATH backend (the one with forward-mode AD)."""
    with sdpa_kernel(SDPBackend.MATH):
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    if not return_lse:
        return o
    s = (q @ k.transpose(-1, -2)).float() * (scale if scale is not None else q.shape[-1] ** -0.5)
    bias = mask_to_bias(attn_mask, q, k)
    return o, torch.logsumexp(s if bias is None else s + bias, dim=-1)


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, *, scale: float | None = None,
              impl: str | None = None, return_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention on (B, H, N, D) with exact forward-mode and reverse-mode derivatives.

    Rows whose keys are all masked give 0 on the Triton path (MATH gives NaN, like SDPA).
    With return_lse, also the fp32 log-sum-exp (B, H, Nq), itself differentiable.
    """
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if resolve_impl(q.device, impl) == "math":
        if impl is None and os.environ.get(IMPL_ENV) is None:
            _warn_math(q, k)
        return math_attention(q, k, v, attn_mask, scale, return_lse)
    o, lse = flash_attention(q, k, v, mask_to_bias(attn_mask, q, k), scale)
    return (o, lse) if return_lse else o


def attention_jvp(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                  attn_mask: Tensor | None = None, *, scale: float | None = None,
                  impl: str | None = None) -> tuple[Tensor, Tensor]:
    """(o, tO) in ONE fused pass over K/V (6 matmuls per tile): for hand-written JVPs and benchmarks.

    Neither output is differentiable (tO is a stop-gradient target in sCM-style objectives); use
    torch.func.jvp over `attention` when gradients must flow through o.
    """
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if resolve_impl(q.device, impl) == "math":
        return torch.func.jvp(lambda a, b, c: math_attention(a, b, c, attn_mask, scale), (q, k, v), (tq, tk, tv))
    o, to, _, _ = torch.ops.fewstep.attention_fwd_jvp(q, k, v, tq, tk, tv, mask_to_bias(attn_mask, q, k), scale)
    return o, to
