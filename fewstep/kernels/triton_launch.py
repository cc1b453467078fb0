"""Launchers for the Triton attention kernels: input checks, strides, grids and autotuning.

Autotuning is keyed on power-of-two *buckets* of the sequence lengths (plus head-dim tile, dtype,
bias and tangent flags), and the kernels do not specialise on the lengths, so a new resolution or
prompt length reuses both the compiled binary and the tuned block sizes. Under TRITON_INTERPRET=1
(CPU tests) there is no autotuning: one small tile size so odd lengths span several blocks.
"""

from __future__ import annotations

from typing import Callable

import torch
import triton
from torch import Tensor

from . import triton_attention as kernels

INTERPRET = bool(triton.knobs.runtime.interpret)
INTERPRET_BLOCK = 16
MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _patch_interpreter_bf16_dot() -> None:
    """Triton's interpreter multiplies the raw uint16 bit patterns of bfloat16 `tl.dot` operands
    (triton-lang/triton#11584, "not supported yet"). Upcasting them first is exact (bf16 ⊂ fp32), i.e.
    what an MMA with fp32 accumulation computes, so the interpreted kernels (the CPU tests, the benchmark's dry run)
    run unchanged. Compiled kernels never reach this code."""
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder, "_fewstep_bf16_dot", False):
        return
    original = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # noqa: ANN001
        a = self.cast_impl(a, tl.float32) if a.dtype.scalar == tl.bfloat16 else a
        b = self.cast_impl(b, tl.float32) if b.dtype.scalar == tl.bfloat16 else b
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot
    builder._fewstep_bf16_dot = True


if INTERPRET:
    _patch_interpreter_bf16_dot()


def _prune(configs: list, named_args: dict, **kwargs: object) -> list:
    """Drop tiles too large for shared memory / registers at big head dims (the autotuner would skip
    them after a failed compile anyway; pruning saves that time)."""
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    limit = 64 * 64 if block_d >= 256 else 128 * 128
    kept = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= limit]
    return kept or configs[:1]


def _configs(tiles: tuple[tuple[int, int, int, int], ...]) -> list:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in tiles]


_FWD_TILES = ((128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 64, 4, 4),
              (64, 128, 4, 3), (64, 32, 4, 4), (128, 32, 8, 3))
_DKDV_TILES = ((32, 64, 4, 3), (64, 64, 4, 3), (32, 128, 8, 3), (64, 128, 8, 2), (16, 64, 4, 4))
_DQ_TILES = ((64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 8, 3), (128, 64, 8, 2))
_KEY = ["N_Q_BUCKET", "N_K_BUCKET", "BLOCK_D", "HAS_BIAS"]


def _tuned(kernel: Callable, tiles: tuple, key: list[str]) -> Callable:
    if INTERPRET:
        return kernel
    return triton.autotune(_configs(tiles), key=key, prune_configs_by={"early_config_prune": _prune})(kernel)


_FWD = _tuned(kernels._fwd_kernel, _FWD_TILES, _KEY + ["WITH_TANGENT"])
_TANGENT = _tuned(kernels._tangent_kernel, _FWD_TILES, _KEY)
_DKDV = _tuned(kernels._bwd_dkdv_kernel, _DKDV_TILES, _KEY)
_DQ = _tuned(kernels._bwd_dq_kernel, _DQ_TILES, _KEY)


def _blocks() -> dict[str, int]:
    return {"BLOCK_M": INTERPRET_BLOCK, "BLOCK_N": INTERPRET_BLOCK} if INTERPRET else {}


def _bucket(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 16))


def _rows(t: Tensor) -> tuple[int, int, int]:
    """(batch, head, row) strides; the kernels assume the head dim is contiguous."""
    return t.stride(0), t.stride(1), t.stride(2)


def _inner_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Fail with a readable message before a kernel sees shapes it does not handle."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"expected (B, H, N, D) tensors, got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"incompatible shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q, k, v must share one dtype of {SUPPORTED_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head dim {q.shape[-1]} > {MAX_HEAD_DIM} is not supported by the Triton kernels")
    if q.device.type == "cpu" and not INTERPRET:
        raise RuntimeError("Triton attention on CPU tensors needs TRITON_INTERPRET=1 set before triton is first "
                           "imported; use impl='math' on CPU otherwise")


def _bias_strides(bias: Tensor | None) -> tuple[int, ...]:
    """(batch, head, query, key) strides of the bias view; 0 on broadcast dims (key-padding masks)."""
    return tuple(bias.stride()) if bias is not None else (0, 0, 0, 0)


def _flags(q: Tensor, bias: Tensor | None) -> dict:
    """Compile-time arguments shared by all kernels (plus fixed tiles under the interpreter)."""
    return {"HAS_BIAS": bias is not None, "PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
            "BLOCK_D": max(16, triton.next_power_of_2(q.shape[-1])), **_blocks()}


def _grid_rows(q: Tensor, n: int) -> Callable:
    return lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), q.shape[0] * q.shape[1])


def forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float,
            tangents: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, ...]:
    """(o, lse), or with tangents (o, to, lse, tlse) from the fused single-pass kernel."""
    check_inputs(q, k, v)
    q, k, v = (_inner_contiguous(t) for t in (q, k, v))
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty((batch, heads, n_q), device=q.device, dtype=torch.float32)
    with_tangent = tangents is not None
    if with_tangent:
        tq, tk, tv = (_inner_contiguous(t.to(q.dtype)) for t in tangents)
        to, tlse = torch.empty_like(q), torch.empty_like(lse)
    else:
        tq, tk, tv, to, tlse = q, k, v, o, lse  # placeholders, never read or written
    bias_strides, flags = _bias_strides(bias), _flags(q, bias)
    _FWD[_grid_rows(q, n_q)](
        q, k, v, tq, tk, tv, bias if bias is not None else q, o, to, lse, tlse,
        *_rows(q), *_rows(k), *_rows(v), *_rows(tq), *_rows(tk), *_rows(tv), *bias_strides, *_rows(o), *_rows(to),
        heads, n_q, n_k, head_dim, float(scale), _bucket(n_q), _bucket(n_k), WITH_TANGENT=with_tangent, **flags)
    return (o, to, lse, tlse) if with_tangent else (o, lse)


def tangent(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor, bias: Tensor | None,
            o: Tensor, lse: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """(to, tlse) given the forward's o and lse: the jvp half of the autograd path."""
    check_inputs(q, k, v)
    q, k, v, o = (_inner_contiguous(t) for t in (q, k, v, o))
    tq, tk, tv = (_inner_contiguous(t.to(q.dtype)) for t in (tq, tk, tv))
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    to, tlse = torch.empty_like(q), torch.empty_like(lse)
    bias_strides, flags = _bias_strides(bias), _flags(q, bias)
    _TANGENT[_grid_rows(q, n_q)](
        q, k, v, tq, tk, tv, bias if bias is not None else q, o, lse.contiguous(), to, tlse,
        *_rows(q), *_rows(k), *_rows(v), *_rows(tq), *_rows(tk), *_rows(tv), *bias_strides, *_rows(o), *_rows(to),
        heads, n_q, n_k, head_dim, float(scale), _bucket(n_q), _bucket(n_k), **flags)
    return to, tlse


def backward(do: Tensor, dlse: Tensor | None, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None,
             o: Tensor, lse: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) for the primal output; dlse (gradient reaching the log-sum-exp) is optional."""
    check_inputs(q, k, v)
    q, k, v, o = (_inner_contiguous(t) for t in (q, k, v, o))
    do = _inner_contiguous(do.to(q.dtype))
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    bias_strides, flags = _bias_strides(bias), _flags(q, bias)
    delta = torch.empty((batch, heads, n_q), device=q.device, dtype=torch.float32)
    dlse_arg = dlse.float().contiguous() if dlse is not None else delta
    delta_block = 64
    kernels._bwd_delta_kernel[(triton.cdiv(n_q, delta_block), batch * heads)](
        o, do, dlse_arg, delta, *_rows(o), *_rows(do), heads, n_q, head_dim, HAS_DLSE=dlse is not None,
        BLOCK_M=delta_block, BLOCK_D=flags["BLOCK_D"])
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=q.device, dtype=q.dtype)
    dv = torch.empty(v.shape, device=q.device, dtype=q.dtype)
    bias_arg = bias if bias is not None else q
    shared = (*_rows(q), *_rows(k), *_rows(v), *bias_strides, *_rows(do),
              heads, n_q, n_k, head_dim, float(scale), _bucket(n_q), _bucket(n_k))
    _DKDV[lambda meta: (triton.cdiv(n_k, meta["BLOCK_N"]), batch * heads)](
        q, k, v, bias_arg, do, lse.contiguous(), delta, dk, dv, *shared, **flags)
    _DQ[_grid_rows(q, n_q)](q, k, v, bias_arg, do, lse.contiguous(), delta, dq, *shared, **flags)
    return dq, dk, dv
