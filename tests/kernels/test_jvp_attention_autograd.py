"""`attention` through every transform: torch.func.jvp, forward-AD duals, autograd, torch.compile."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from fewstep.kernels import attention, attention_jvp, resolve_impl
from fewstep.kernels import jvp_attention as jvp_module
from fewstep.kernels.jvp_attention import mask_to_bias
from tests.kernels.attention_reference import reference_attention, reference_grads, reference_jvp, rel_err

TOL = 2e-5


def inputs(device: torch.device, n_q: int = 19, n_k: int = 21, head_dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 2, n_q, head_dim), (2, 2, n_k, head_dim), (2, 2, n_k, head_dim)]
    primals = tuple(torch.randn(*s, generator=g).to(device) for s in shapes)
    tangents = tuple(torch.randn(*s, generator=g).to(device) for s in shapes)
    mask = torch.ones(2, 1, 1, n_k, dtype=torch.bool, device=device)
    mask[0, ..., 15:] = False
    return primals, tangents, mask


def triton_attention(q, k, v, mask=None, **kw):  # noqa: ANN001, ANN201
    return attention(q, k, v, mask, impl="triton", **kw)


def test_func_jvp_matches_float64_reference(device: torch.device) -> None:
    (q, k, v), tangents, mask = inputs(device)
    o, to = torch.func.jvp(lambda a, b, c: triton_attention(a, b, c, mask), (q, k, v), tangents)
    o_ref, _, to_ref, _ = reference_jvp(q, k, v, tangents, mask_to_bias(mask, q, k))
    assert rel_err(o, o_ref) < TOL and rel_err(to, to_ref) < TOL


def test_forward_ad_dual_tensors(device: torch.device) -> None:
    (q, k, v), tangents, mask = inputs(device)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip((q, k, v), tangents)]
        to = fwAD.unpack_dual(triton_attention(*duals, mask)).tangent
    _, _, to_ref, _ = reference_jvp(q, k, v, tangents, mask_to_bias(mask, q, k))
    assert rel_err(to, to_ref) < TOL


def test_tangents_of_constant_inputs_are_zero(device: torch.device) -> None:
    """Only q carries a tangent (k, v are constants, like text tokens): k/v tangents count as zero."""
    (q, k, v), (tq, _, _), _ = inputs(device)
    _, to = torch.func.jvp(lambda a: triton_attention(a, k, v), (q,), (tq,))
    _, _, to_ref, _ = reference_jvp(q, k, v, (tq, torch.zeros_like(k), torch.zeros_like(v)))
    assert rel_err(to, to_ref) < TOL


def test_backward_matches_float64_reference(device: torch.device) -> None:
    (q, k, v), (do, _, _), mask = inputs(device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o = triton_attention(*leaves, mask, scale=0.4)
    grads = torch.autograd.grad(o, leaves, do)
    for got, ref in zip(grads, reference_grads(q, k, v, do, None, mask_to_bias(mask, q, k), 0.4)):
        assert rel_err(got, ref) < 5 * TOL


def test_log_sum_exp_output_is_differentiable_both_ways(device: torch.device) -> None:
    (q, k, v), tangents, _ = inputs(device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    _, lse = triton_attention(*leaves, return_lse=True)
    dlse = torch.randn_like(lse)
    grads = torch.autograd.grad(lse, leaves, dlse)
    for got, ref in zip(grads, reference_grads(q, k, v, torch.zeros_like(q), dlse)):
        assert rel_err(got, ref) < 5 * TOL
    (_, lse), (_, tlse) = torch.func.jvp(lambda a, b, c: triton_attention(a, b, c, return_lse=True), (q, k, v),
                                         tangents)
    _, lse_ref, _, tlse_ref = reference_jvp(q, k, v, tangents)
    assert rel_err(lse, lse_ref) < TOL and rel_err(tlse, tlse_ref) < TOL


def test_gradient_flows_through_primal_of_a_jvp(device: torch.device) -> None:
    """sCM pattern: loss uses o with gradient and the tangent as a detached target."""
    (q, k, v), tangents, _ = inputs(device)
    q_leaf = q.clone().requires_grad_()
    o, to = torch.func.jvp(lambda a: triton_attention(a, k, v), (q_leaf,), (tangents[0],))
    (grad,) = torch.autograd.grad((o * to.detach()).sum(), q_leaf)
    q64 = q.double().requires_grad_()
    o_ref, to_ref = torch.func.jvp(lambda a: reference_attention(a, k, v)[0], (q64,), (tangents[0].double(),))
    (grad_ref,) = torch.autograd.grad((o_ref * to_ref.detach()).sum(), q64)
    assert rel_err(grad, grad_ref) < 5 * TOL


def test_tangent_is_not_differentiable(device: torch.device) -> None:
    (q, k, v), tangents, _ = inputs(device)
    q_leaf = q.clone().requires_grad_()
    _, to = torch.func.jvp(lambda a: triton_attention(a, k, v), (q_leaf,), (tangents[0],))
    with pytest.raises(RuntimeError, match="not differentiable"):
        to.sum().backward()


def test_fused_attention_jvp_api(device: torch.device) -> None:
    (q, k, v), tangents, mask = inputs(device, n_q=9, n_k=40)
    o, to = attention_jvp(q, k, v, *tangents, mask, impl="triton")
    o_ref, _, to_ref, _ = reference_jvp(q, k, v, tangents, mask_to_bias(mask, q, k))
    assert rel_err(o, o_ref) < TOL and rel_err(to, to_ref) < TOL


def test_torch_compile_fullgraph_forward_backward_and_jvp(device: torch.device) -> None:
    torch._dynamo.reset()
    (q, k, v), tangents, mask = inputs(device)
    compiled = torch.compile(lambda a, b, c: triton_attention(a, b, c, mask), backend="aot_eager", fullgraph=True)
    q_leaf = q.clone().requires_grad_()
    (grad,) = torch.autograd.grad(compiled(q_leaf, k, v), q_leaf, tangents[0])
    grad_ref = reference_grads(q, k, v, tangents[0], None, mask_to_bias(mask, q, k))[0]
    assert rel_err(grad, grad_ref) < 5 * TOL
    compiled_jvp = torch.compile(lambda a, b, c: torch.func.jvp(lambda x, y, z: triton_attention(x, y, z, mask),
                                                                (a, b, c), tangents),
                                 backend="aot_eager", fullgraph=True)
    _, to = compiled_jvp(q, k, v)
    assert rel_err(to, reference_jvp(q, k, v, tangents, mask_to_bias(mask, q, k))[2]) < TOL


def test_math_fallback_matches_and_warns_once_with_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(jvp_module.IMPL_ENV, raising=False)
    monkeypatch.setattr(jvp_module, "_warned_math", set())
    (q, k, v), tangents, mask = inputs(torch.device("cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        o, to = torch.func.jvp(lambda a, b, c: attention(a, b, c, mask), (q, k, v), tangents)
        attention(q, k, v)
    messages = [str(w.message) for w in caught if "MATH attention" in str(w.message)]
    assert len(messages) == 1 and "MiB" in messages[0]
    o_ref, _, to_ref, _ = reference_jvp(q, k, v, tangents, mask_to_bias(mask, q, k))
    assert rel_err(o, o_ref) < TOL and rel_err(to, to_ref) < TOL


def test_impl_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.delenv(jvp_module.IMPL_ENV, raising=False)
    assert resolve_impl(cpu) == "math"
    monkeypatch.setenv(jvp_module.IMPL_ENV, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl(cpu) == "triton"
    assert resolve_impl(cpu, "math") == "math"  # the argument beats the environment
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_impl(cpu)
    with pytest.raises(ValueError, match="impl"):
        resolve_impl(cpu, "flash")
