"""Triton kernels (forward + LSE, fused forward+JVP, tangent-from-LSE, backward) against float64 math.

On CPU these run in Triton's interpreter with 16×16 tiles, so the odd lengths below span several
blocks with ragged last tiles; head dims 24/72/80 exercise the power-of-two padding masks.
"""

from __future__ import annotations

import pytest
import torch

from fewstep.kernels.jvp_attention import mask_to_bias
from tests.kernels.attention_reference import reference_grads, reference_jvp, rel_err

ops = torch.ops.fewstep

# name: (batch, heads, n_q, n_k, head_dim, mask)
CASES = {
    "self_odd": (1, 2, 37, 37, 24, None),
    "cross_odd_d72": (2, 1, 33, 19, 72, None),
    "key_padding": (2, 2, 21, 29, 16, "key_padding"),
    "full_bias_d80": (1, 2, 18, 23, 80, "bias"),
}
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def make_inputs(case: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    batch, heads, n_q, n_k, head_dim, mask_kind = CASES[case]
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    q, k, v = rand(batch, heads, n_q, head_dim), rand(batch, heads, n_k, head_dim), rand(batch, heads, n_k, head_dim)
    tangents = (rand(*q.shape), rand(*k.shape), rand(*v.shape))
    mask = None
    if mask_kind == "key_padding":  # text padding: the second sample attends to its first 20 keys only
        mask = torch.ones(batch, 1, 1, n_k, dtype=torch.bool, device=device)
        mask[1, ..., 20:] = False
    elif mask_kind == "bias":
        mask = torch.randn(1, heads, n_q, n_k, generator=g).to(device)
    return q, k, v, tangents, mask_to_bias(mask, q, k)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_lse(case: str, device: torch.device) -> None:
    q, k, v, _, bias = make_inputs(case, torch.float32, device)
    o, lse = ops.attention_fwd(q, k, v, bias, 0.3)
    o_ref, lse_ref, _, _ = reference_jvp(q, k, v, (q, k, v), bias, 0.3)
    assert rel_err(o, o_ref) < TOL[torch.float32]
    assert rel_err(lse, lse_ref) < TOL[torch.float32]


@pytest.mark.parametrize("case", list(CASES))
def test_fused_forward_jvp(case: str, device: torch.device) -> None:
    q, k, v, tangents, bias = make_inputs(case, torch.float32, device)
    o, to, lse, tlse = ops.attention_fwd_jvp(q, k, v, *tangents, bias, 0.3)
    o_ref, lse_ref, to_ref, tlse_ref = reference_jvp(q, k, v, tangents, bias, 0.3)
    for got, ref in ((o, o_ref), (to, to_ref), (lse, lse_ref), (tlse, tlse_ref)):
        assert rel_err(got, ref) < TOL[torch.float32]


@pytest.mark.parametrize("case", list(CASES))
def test_tangent_from_lse(case: str, device: torch.device) -> None:
    q, k, v, tangents, bias = make_inputs(case, torch.float32, device)
    o, lse = ops.attention_fwd(q, k, v, bias, 0.3)
    to, tlse = ops.attention_tangent(q, k, v, *tangents, bias, o, lse, 0.3)
    _, _, to_ref, tlse_ref = reference_jvp(q, k, v, tangents, bias, 0.3)
    assert rel_err(to, to_ref) < TOL[torch.float32]
    assert rel_err(tlse, tlse_ref) < TOL[torch.float32]


@pytest.mark.parametrize("case", list(CASES))
def test_backward_with_lse_gradient(case: str, device: torch.device) -> None:
    q, k, v, (do, _, _), bias = make_inputs(case, torch.float32, device)
    o, lse = ops.attention_fwd(q, k, v, bias, 0.3)
    dlse = torch.randn_like(lse)
    grads = ops.attention_bwd(do, dlse, q, k, v, bias, o, lse, 0.3)
    for got, ref in zip(grads, reference_grads(q, k, v, do, dlse, bias, 0.3)):
        assert rel_err(got, ref) < 5 * TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_fp32(dtype: torch.dtype, device: torch.device) -> None:
    q, k, v, tangents, bias = make_inputs("key_padding", dtype, device)
    o, to, lse, _ = ops.attention_fwd_jvp(q, k, v, *tangents, bias, 0.25)
    o_ref, lse_ref, to_ref, _ = reference_jvp(q, k, v, tangents, bias, 0.25)  # same rounded inputs, float64
    assert o.dtype == to.dtype == dtype and lse.dtype == torch.float32
    assert rel_err(o, o_ref) < TOL[dtype]
    assert rel_err(to, to_ref) < 2 * TOL[dtype]
    assert rel_err(lse, lse_ref) < TOL[dtype]
    grads = ops.attention_bwd(tangents[0], None, q, k, v, bias, o, lse, 0.25)
    for got, ref in zip(grads, reference_grads(q, k, v, tangents[0], None, bias, 0.25)):
        assert got.dtype == dtype and rel_err(got, ref) < 2 * TOL[dtype]


def test_strided_diffusers_layout(device: torch.device) -> None:
    """diffusers hands SDPA `x.view(B, N, H, D).transpose(1, 2)`: strided, not contiguous."""
    def layout(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).contiguous().transpose(1, 2)

    q, k, v, tangents, _ = make_inputs("self_odd", torch.float32, device)
    q, k, v = layout(q), layout(k), layout(v)
    assert not q.is_contiguous()
    o, to, _, _ = ops.attention_fwd_jvp(q, k, v, *(layout(t) for t in tangents), None, 0.2)
    o_ref, _, to_ref, _ = reference_jvp(q, k, v, tangents, None, 0.2)
    assert o.stride() == q.stride()  # output keeps the layout: the transpose back is free
    assert rel_err(o, o_ref) < TOL[torch.float32] and rel_err(to, to_ref) < TOL[torch.float32]


def test_fully_masked_rows_give_zeros_not_nan(device: torch.device) -> None:
    q, k, v, tangents, _ = make_inputs("key_padding", torch.float32, device)
    bias = torch.zeros(2, 2, 21, 29, device=device)
    bias[0, :, 3] = float("-inf")  # query row 3 of sample 0 may attend to nothing
    o, to, lse, _ = ops.attention_fwd_jvp(q, k, v, *tangents, bias, 0.25)
    grads = ops.attention_bwd(tangents[0], None, q, k, v, bias, o, lse, 0.25)
    assert torch.all(o[0, :, 3] == 0) and torch.all(to[0, :, 3] == 0)
    assert all(torch.isfinite(t).all() for t in (o, to, *grads))
    o_ref, _, to_ref, _ = reference_jvp(q[1:], k[1:], v[1:], tuple(t[1:] for t in tangents), bias[1:], 0.25)
    assert rel_err(o[1:], o_ref) < TOL[torch.float32] and rel_err(to[1:], to_ref) < TOL[torch.float32]


def test_rejects_unsupported_inputs(device: torch.device) -> None:
    q = torch.randn(1, 1, 8, 16, device=device)
    with pytest.raises(ValueError, match="head dim"):
        ops.attention_fwd(torch.randn(1, 1, 8, 320, device=device), torch.randn(1, 1, 8, 320, device=device),
                          torch.randn(1, 1, 8, 320, device=device), None, 1.0)
    with pytest.raises(TypeError, match="dtype"):
        ops.attention_fwd(q, q.half(), q, None, 1.0)


def test_large_negative_logits_do_not_underflow(device: torch.device) -> None:
    """Softmax is shift-invariant: a uniform bias of -300 (exp underflows in fp32) changes only the LSE."""
    q, k, v, tangents, _ = make_inputs("self_odd", torch.float32, device)
    shifted = torch.full((1, 1, 1, 1), -300.0, device=device).expand(1, 2, 37, 37)
    o, to, lse, _ = ops.attention_fwd_jvp(q, k, v, *tangents, shifted, 0.3)
    o_ref, lse_ref, to_ref, _ = reference_jvp(q, k, v, tangents, None, 0.3)
    assert rel_err(o, o_ref) < TOL[torch.float32] and rel_err(to, to_ref) < TOL[torch.float32]
    assert torch.allclose(lse.double(), lse_ref - 300.0, atol=1e-3)
