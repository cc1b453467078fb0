"""Compiled kernels at realistic sizes (CUDA only; the CPU suite covers the math in the interpreter)."""

from __future__ import annotations

import pytest
import torch

from fewstep.kernels import attention, attention_jvp
from tests.kernels.attention_reference import reference_grads, reference_jvp, rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
TOL = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_large_cross_attention_with_padding(dtype: torch.dtype, head_dim: int) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 4, 1031, head_dim, device="cuda", generator=g, dtype=dtype)
    k, v = (torch.randn(2, 4, 333, head_dim, device="cuda", generator=g, dtype=dtype) for _ in range(2))
    tangents = tuple(torch.randn_like(t) for t in (q, k, v))
    mask = torch.ones(2, 1, 1, 333, dtype=torch.bool, device="cuda")
    mask[1, ..., 200:] = False
    bias = torch.zeros(2, 1, 1, 333, device="cuda").masked_fill(~mask, float("-inf"))
    o, to = attention_jvp(q, k, v, *tangents, mask)
    o_ref, _, to_ref, _ = reference_jvp(q, k, v, tangents, bias)
    assert rel_err(o, o_ref) < TOL[dtype] and rel_err(to, to_ref) < 2 * TOL[dtype]
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(attention(*leaves, mask), leaves, tangents[0])
    for got, ref in zip(grads, reference_grads(q, k, v, tangents[0], None, bias)):
        assert rel_err(got, ref) < 2 * TOL[dtype]


def test_new_length_in_same_bucket_reuses_tuned_config() -> None:
    from fewstep.kernels import triton_launch

    q = torch.randn(1, 2, 1000, 64, device="cuda", dtype=torch.bfloat16)
    attention(q, q, q)
    tuned = len(triton_launch._FWD.cache)
    attention(q[:, :, :990], q[:, :, :990], q[:, :, :990])
    assert len(triton_launch._FWD.cache) == tuned  # 990 and 1000 share the 1024 bucket


def test_inductor_compile_of_jvp() -> None:
    q, k, v = (torch.randn(2, 4, 512, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    tangents = tuple(torch.randn_like(t) for t in (q, k, v))
    compiled = torch.compile(lambda a, b, c: torch.func.jvp(attention, (a, b, c), tangents), fullgraph=True)
    _, to = compiled(q, k, v)
    assert rel_err(to, reference_jvp(q, k, v, tangents)[2]) < 2 * TOL[torch.bfloat16]
