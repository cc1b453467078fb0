"""fd_jvp (the FSDP2 fallback) measured against the exact JVP from torch.func.jvp."""

from __future__ import annotations

import pytest
import torch

from fewstep.kernels import fd_jvp, math_attention
from tests.kernels.attention_reference import rel_err


def block(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A smooth transformer-like function: projection, tanh, self-attention (B, H, N, D)."""
    h = torch.tanh(x @ weight)
    return math_attention(h, h, x)


def _problem(dtype: torch.dtype) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 2, 12, 8, generator=g), torch.randn(8, 8, generator=g) / 3
    tx, tw = torch.randn(2, 2, 12, 8, generator=g), torch.randn(8, 8, generator=g)
    return (x.to(dtype), w.to(dtype)), (tx.to(dtype), tw.to(dtype))


def test_central_difference_is_second_order_in_float64() -> None:
    primals, tangents = _problem(torch.float64)
    out, exact = torch.func.jvp(block, primals, tangents)
    errors = {eps: rel_err(fd_jvp(block, primals, tangents, eps)[1], exact) for eps in (4e-3, 2e-3, 1e-3)}
    assert 3.5 < errors[4e-3] / errors[2e-3] < 4.5 and 3.5 < errors[2e-3] / errors[1e-3] < 4.5  # O(eps²)
    assert errors[1e-3] < 5e-5
    assert torch.equal(fd_jvp(block, primals, tangents)[0], out)


def test_default_eps_accuracy_in_float32() -> None:
    primals, tangents = _problem(torch.float32)
    _, exact = torch.func.jvp(block, *_problem(torch.float64))
    assert rel_err(fd_jvp(block, primals, tangents)[1], exact) < 1e-3


def test_half_precision_difference_is_taken_in_float32() -> None:
    primals, tangents = _problem(torch.bfloat16)
    _, exact = torch.func.jvp(block, *_problem(torch.float64))
    _, approx = fd_jvp(block, primals, tangents, eps=3e-2)
    assert approx.dtype == torch.float32
    assert rel_err(approx, exact) < 0.1  # bf16 has 8 mantissa bits: FD is coarse, but not garbage


def test_pytree_outputs_and_non_float_primals() -> None:
    def fn(x: torch.Tensor, n: int, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sq": x.square() * n, "sum": x.sum() + labels.sum()}

    x = torch.randn(5, dtype=torch.float64)
    labels = torch.arange(3)
    _, tangent = fd_jvp(fn, (x, 2, labels), (torch.ones(5, dtype=torch.float64), None, None), eps=1e-4)
    assert (torch.allclose(tangent["sq"], 4 * x, atol=1e-8)
            and torch.allclose(tangent["sum"], torch.tensor(5.0).double()))
    with pytest.raises(ValueError, match="tangents"):
        fd_jvp(fn, (x, 2, labels), (x,))
