"""torch.func.jvp through tiny diffusers models with fewstep's attention processors.

Reference: the same weights in float64 with diffusers' own processors under SDPA's MATH backend,
itself cross-checked by central finite differences. On CPU the kernels are interpreted with 64×64
tiles (a tiny model's whole sequence in one tile) to keep the runtime small; multi-tile paths are
covered by test_jvp_attention_kernels.py.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fewstep.kernels import (
    JVPAttnProcessor,
    JVPUnsupportedError,
    check_jvp_support,
    disable_jvp_attention,
    enable_jvp_attention,
    fd_jvp,
    jvp_attention_enabled,
    set_attention_backend,
)
from fewstep.kernels.processors import attention_modules
from fewstep.models.tiny import tiny_denoiser
from tests.kernels.attention_reference import rel_err

# kind: (eps, tolerance) of the float64 finite-difference check of the reference (None: no check), and
# whether to also check fewstep's float32 JVP against float32 finite differences (skipped where slow
# to interpret). FLUX builds its rotary tables in float32 inside a float64 model, so its differences
# converge less far; SANA's linear attention runs in float32 with ReLU kernels and a normaliser that
# can be near zero, so finite differences are ill-conditioned at every eps (1e-2 error at best).
FD_CHECKS = {
    "unet2d_condition": (1e-4, 1e-6, False),
    "sd3": (1e-4, 1e-6, True),
    "flux": (1e-3, 1e-5, True),
    "sana": (None, None, False),
    "dit": (1e-4, 1e-6, True),
}


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count Triton launches (proves the model really went through the kernels) and use big tiles."""
    from fewstep.kernels import triton_launch

    monkeypatch.setattr(triton_launch, "INTERPRET_BLOCK", 64)
    calls = {"forward": 0, "tangent": 0}
    for name in calls:
        original = getattr(triton_launch, name)

        def counted(*args, _name=name, _original=original, **kwargs):  # noqa: ANN001, ANN202
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(triton_launch, name, counted)
    return calls


def _model_and_inputs(kind: str, device: torch.device):
    batch = 1 if kind == "unet2d_condition" else 2  # the UNet has 8 attention layers: slow to interpret
    denoiser, cond = tiny_denoiser(kind, batch_size=batch)
    if kind == "sana":  # text padding in cross attention: sample 1 has 8 real tokens
        cond["encoder_attention_mask"][1, 8:] = 0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    tx = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.tensor([0.3, 0.7])[:batch]
    return denoiser.to(device), {k: v.to(device) for k, v in cond.items()}, x.to(device), tx.to(device), t.to(device)


def _double(cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in cond.items()}


@pytest.mark.parametrize("kind", list(FD_CHECKS))
def test_model_jvp_matches_math_reference_and_finite_differences(kind: str, device: torch.device,
                                                                  kernel_calls: dict[str, int]) -> None:
    fd_eps, fd_tol, check_fd32 = FD_CHECKS[kind]
    denoiser, cond, x, tx, t = _model_and_inputs(kind, device)
    reference = copy.deepcopy(denoiser).double()
    with jvp_attention_enabled(denoiser, impl="triton"):
        out, tangent = torch.func.jvp(lambda xt: denoiser(xt, t, cond), (x,), (tx,))
        tangent_fd32 = fd_jvp(lambda xt: denoiser(xt, t, cond), (x,), (tx,), eps=1e-2)[1] if check_fd32 else None
    assert kernel_calls["forward"] > 0 and kernel_calls["tangent"] > 0

    cond64 = _double(cond)
    with sdpa_kernel(SDPBackend.MATH):
        out_ref, tangent_ref = torch.func.jvp(lambda xt: reference(xt, t.double(), cond64), (x.double(),),
                                              (tx.double(),))
        if fd_eps is not None:
            tangent_fd64 = fd_jvp(lambda xt: reference(xt, t.double(), cond64), (x.double(),), (tx.double(),),
                                  fd_eps)[1]
            assert rel_err(tangent_fd64, tangent_ref) < fd_tol  # the reference agrees with finite differences
    assert rel_err(out, out_ref) < 1e-5
    assert rel_err(tangent, tangent_ref) < 1e-5
    if check_fd32:
        assert rel_err(tangent_fd32, tangent_ref) < 2e-3


def test_enable_wraps_only_softmax_attention_and_keeps_signatures() -> None:
    flux, _ = tiny_denoiser("flux", batch_size=1)
    wrapped = enable_jvp_attention(flux)
    assert wrapped and all(isinstance(m.processor, JVPAttnProcessor) for _, m in attention_modules(flux))
    proc = next(m.processor for _, m in attention_modules(flux))
    # diffusers drops kwargs the processor signature does not name: rotary embeddings must survive
    assert "image_rotary_emb" in inspect.signature(proc.__call__).parameters
    disable_jvp_attention(flux)
    assert not any(isinstance(m.processor, JVPAttnProcessor) for _, m in attention_modules(flux))

    sana, _ = tiny_denoiser("sana", batch_size=1)
    names = enable_jvp_attention(sana)
    assert names and all(name.endswith("attn2") for name in names)  # linear self-attention left alone


def test_context_manager_restores_exact_processors() -> None:
    sd3, _ = tiny_denoiser("sd3", batch_size=1)
    before = {name: m.processor for name, m in attention_modules(sd3)}
    with jvp_attention_enabled(sd3):
        assert all(isinstance(m.processor, JVPAttnProcessor) for _, m in attention_modules(sd3))
    assert {name: m.processor for name, m in attention_modules(sd3)} == before


def test_check_jvp_support_names_module_backend_and_fix() -> None:
    sana, _ = tiny_denoiser("sana", batch_size=1)
    with pytest.raises(JVPUnsupportedError) as err:
        check_jvp_support(sana)
    message = str(err.value)
    assert "transformer_blocks.0.attn2" in message and "SanaAttnProcessor2_0" in message
    assert "torch SDPA" in message and "enable_jvp_attention" in message
    assert "attn1" not in message  # linear attention has forward AD already
    enable_jvp_attention(sana)
    routes = check_jvp_support(sana)
    assert set(routes.values()) == {"fewstep", "native-ad"}


def test_check_jvp_support_names_dispatcher_backend() -> None:
    flux, _ = tiny_denoiser("flux", batch_size=1)
    with pytest.raises(JVPUnsupportedError, match="FluxAttnProcessor via diffusers dispatcher"):
        check_jvp_support(flux)


def test_set_attention_backend_round_trip_and_errors() -> None:
    dit, _ = tiny_denoiser("dit", batch_size=1)
    set_attention_backend(dit, "fewstep")
    check_jvp_support(dit)
    set_attention_backend(dit, "sdpa")
    with pytest.raises(JVPUnsupportedError):
        check_jvp_support(dit)
    with pytest.raises(ValueError, match="sdpa"):
        set_attention_backend(dit, "flash")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="xformers"):
            set_attention_backend(dit, "xformers")


def test_torch_compile_through_processors(device: torch.device, kernel_calls: dict[str, int]) -> None:
    """FLUX: dispatcher-based processor, rotary embeddings and Tensor.unflatten inside the routing mode."""
    torch._dynamo.reset()
    denoiser, cond, x, tx, t = _model_and_inputs("flux", device)
    enable_jvp_attention(denoiser, impl="triton")
    eager_out = denoiser(x, t, cond)
    compiled = torch.compile(lambda xt: denoiser(xt, t, cond), backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()  # parameters get gradients through the compiled Triton backward
    assert rel_err(out, eager_out.double()) < 1e-6
    assert all(p.grad is not None for p in denoiser.parameters() if p.requires_grad)
    with torch.no_grad():  # the tangent is a stop-gradient target: compile the JVP without autograd
        compiled_jvp = torch.compile(lambda xt: torch.func.jvp(lambda y: denoiser(y, t, cond), (xt,), (tx,)),
                                     backend="aot_eager", fullgraph=True)
        _, tangent = compiled_jvp(x)
        _, eager_tangent = torch.func.jvp(lambda y: denoiser(y, t, cond), (x,), (tx,))
    assert rel_err(tangent, eager_tangent.double()) < 1e-6


@pytest.mark.parametrize("variant", ["3d", "gqa", "causal", "bool_mask", "float_mask"])
def test_sdpa_signature_matches_pytorch_math(variant: str, device: torch.device) -> None:
    """What the routing mode hands to fewstep: every F.scaled_dot_product_attention calling form."""
    from fewstep.kernels.processors import sdpa_compatible_attention

    g = torch.Generator().manual_seed(3)
    heads_kv = 1 if variant == "gqa" else 2
    q = torch.randn(2, 2, 9, 16, generator=g)
    k, v = torch.randn(2, heads_kv, 11, 16, generator=g), torch.randn(2, heads_kv, 11, 16, generator=g)
    kwargs: dict = {"enable_gqa": variant == "gqa", "is_causal": variant == "causal"}
    if variant == "3d":
        q, k, v = q[:, 0], k[:, 0], v[:, 0]
    if variant == "bool_mask":
        kwargs["attn_mask"] = torch.rand(2, 1, 9, 11, generator=g) > 0.3
        kwargs["attn_mask"][..., 0] = True  # keep every row non-empty (SDPA would give NaN)
    if variant == "float_mask":
        kwargs["attn_mask"] = torch.randn(9, 11, generator=g)
    with sdpa_kernel(SDPBackend.MATH):
        expected = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), **{
            key: value.double() if torch.is_tensor(value) and value.is_floating_point() else value
            for key, value in kwargs.items()})
    got = sdpa_compatible_attention(q.to(device), k.to(device), v.to(device), impl="triton",
                                    **{key: value.to(device) if torch.is_tensor(value) else value
                                       for key, value in kwargs.items()})
    assert got.shape == expected.shape and rel_err(got.cpu(), expected) < 2e-5
