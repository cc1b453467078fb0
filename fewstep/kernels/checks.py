"""Start-up guard for JVP objectives, and a finite-difference JVP for setups without forward AD.

`check_jvp_support` fails at start with the module, backend and fix, instead of a
NotImplementedError from deep inside SDPA at the first sCM step. `fd_jvp` is the fallback where
torch.func.jvp cannot run at all (FSDP2 sharded parameters): a central difference, O(eps²) accurate.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .processors import JVPAttnProcessor, attention_modules, routes_through_sdpa

# Processors without a softmax-SDPA kernel: plain differentiable ops, forward AD works as is.
NATIVE_AD_PROCESSORS: set[str] = {
    "AttnProcessor", "SanaLinearAttnProcessor2_0", "SanaLinearAttnProcessor3_0",
    "PAGCFGSanaLinearAttnProcessor2_0", "PAGIdentitySanaLinearAttnProcessor2_0",
}
FIX = "call fewstep.kernels.enable_jvp_attention(model) (or set_attention_backend(model, 'fewstep')) before training"


class JVPUnsupportedError(RuntimeError):
    """An objective needs forward-mode AD through attention the model cannot differentiate that way."""


def _backend_name(processor: Any) -> str:
    backend = getattr(processor, "_attention_backend", None)
    if backend is not None:
        return f"diffusers dispatcher backend '{getattr(backend, 'value', backend)}'"
    if hasattr(processor, "_attention_backend"):
        return "diffusers dispatcher (global active backend)"
    if routes_through_sdpa(processor):
        return "torch SDPA (flash / memory-efficient / cuDNN kernels have no forward-mode AD)"
    if getattr(processor, "_parallel_config", None) is not None:
        return "context-parallel attention (bypasses SDPA; no forward-mode AD)"
    return "unknown kernel"


def jvp_routes(model: nn.Module) -> dict[str, str]:
    """Per attention module: 'fewstep', 'native-ad', or 'unsupported: <processor> via <backend>'."""
    routes = {}
    for name, module in attention_modules(model):
        proc = module.processor
        if isinstance(proc, JVPAttnProcessor):
            routes[name] = "fewstep"
        elif type(proc).__name__ in NATIVE_AD_PROCESSORS:
            routes[name] = "native-ad"
        else:
            routes[name] = f"unsupported: {type(proc).__name__} via {_backend_name(proc)}"
    return routes


def check_jvp_support(model: nn.Module) -> dict[str, str]:
    """Raise JVPUnsupportedError naming every attention module torch.func.jvp cannot go through.

    Call it once at start-up when an objective needs JVP (sCM/rCM, MeanFlow). Returns the routes.
    """
    routes = jvp_routes(model)
    bad = {name: route for name, route in routes.items() if route.startswith("unsupported")}
    if bad:
        prefix = len("unsupported: ")
        listed = "\n".join(f"  {name or '<root>'}: {route[prefix:]}" for name, route in list(bad.items())[:8])
        more = f"\n  ... and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise JVPUnsupportedError(f"{len(bad)} attention module(s) of {type(model).__name__} cannot run "
                                  f"torch.func.jvp:\n{listed}{more}\nFix: {FIX}.")
    return routes


def _axpy(alpha: float, x: Any, y: Any) -> Any:
    return x + alpha * y if torch.is_tensor(x) and x.is_floating_point() and y is not None else x


def fd_jvp(fn: Callable[..., Any], primals: Sequence[Any], tangents: Sequence[Any],
           eps: float = 1e-3) -> tuple[Any, Any]:
    """(fn(*primals), ≈ J·tangents) by the central difference (f(x + eps·t) − f(x − eps·t)) / (2·eps).

    Same contract as torch.func.jvp, for models that cannot run it (FSDP2). Costs three forwards;
    error is O(eps²) truncation plus O(u/eps) rounding (u = unit roundoff of fn's compute dtype), so
    eps ~ 1e-3 suits fp32, ~1e-2 bf16. The difference is taken in fp32 at least, never in half precision.
    Non-tensor and integer primals, and those with a None tangent, are passed through unperturbed.
    """
    if len(primals) != len(tangents):
        raise ValueError(f"{len(primals)} primals but {len(tangents)} tangents")
    plus = [_axpy(eps, p, t) for p, t in zip(primals, tangents)]
    minus = [_axpy(-eps, p, t) for p, t in zip(primals, tangents)]
    out = fn(*primals)

    def widen(y: Any) -> Any:
        return y.float() if torch.is_tensor(y) and y.dtype in (torch.float16, torch.bfloat16) else y

    f_plus, f_minus = tree_map(widen, fn(*plus)), tree_map(widen, fn(*minus))
    tangent = tree_map(lambda a, b: (a - b) / (2 * eps) if torch.is_tensor(a) else None, f_plus, f_minus)
    return out, tangent
