"""Route diffusers attention modules to fewstep's JVP attention, without re-implementing processors.

`JVPAttnProcessor` wraps the processor a module already has (AttnProcessor2_0 for UNet/DiT,
JointAttnProcessor2_0 for SD3, FluxAttnProcessor, SanaAttnProcessor2_0, ...) and runs it under a
TorchFunctionMode that sends each `F.scaled_dot_product_attention` call to `fewstep.kernels.attention`.
So QK-norm, rotary embeddings, joint text-image concatenation and masks stay exactly diffusers' own
code (whatever version is installed); only the softmax-attention kernel changes. Processors built on
diffusers' attention dispatcher are pinned to its "native" backend, which calls that same SDPA.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .jvp_attention import attention

# Processors that call F.scaled_dot_product_attention themselves (dispatcher-based ones are detected
# by their `_attention_backend` attribute). Extend with `register_sdpa_processor`.
SDPA_PROCESSORS: set[str] = {
    "AttnProcessor2_0", "JointAttnProcessor2_0", "FusedAttnProcessor2_0", "FusedJointAttnProcessor2_0",
    "SanaAttnProcessor2_0", "AttnAddedKVProcessor2_0", "AllegroAttnProcessor2_0", "AuraFlowAttnProcessor2_0",
    "FusedAuraFlowAttnProcessor2_0", "CogVideoXAttnProcessor2_0", "FusedCogVideoXAttnProcessor2_0",
    "HunyuanAttnProcessor2_0", "FusedHunyuanAttnProcessor2_0", "LuminaAttnProcessor2_0",
    "StableAudioAttnProcessor2_0", "MochiAttnProcessor2_0", "PAGJointAttnProcessor2_0",
    "PAGCFGJointAttnProcessor2_0", "PAGHunyuanAttnProcessor2_0", "PAGCFGHunyuanAttnProcessor2_0",
}


def register_sdpa_processor(cls: type) -> type:
    """Declare that `cls.__call__` computes attention with F.scaled_dot_product_attention (decorator)."""
    SDPA_PROCESSORS.add(cls.__name__)
    return cls


def sdpa_compatible_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                              enable_gqa: bool = False, *, impl: str | None = None) -> Tensor:
    """F.scaled_dot_product_attention's signature on top of `attention` (3-D or 4-D inputs)."""
    if dropout_p:
        raise NotImplementedError("fewstep attention has no attention dropout; diffusers processors pass 0.0")
    if value.shape[-1] != query.shape[-1]:
        raise NotImplementedError("fewstep attention needs equal q/k and v head dims")
    squeeze = query.ndim == 3
    if squeeze:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        attn_mask = attn_mask.unsqueeze(1) if attn_mask is not None and attn_mask.ndim == 3 else attn_mask
    if enable_gqa and key.shape[1] != query.shape[1]:
        repeats = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
    if is_causal:  # top-left aligned, as SDPA does
        causal = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()
        if attn_mask is None:
            attn_mask = causal
        elif attn_mask.dtype == torch.bool:
            attn_mask = attn_mask & causal
        else:
            attn_mask = attn_mask.masked_fill(~causal, float("-inf"))
    out = attention(query, key, value, attn_mask, scale=scale, impl=impl)
    return out.squeeze(1) if squeeze else out


class RouteSDPA(TorchFunctionMode):
    """Inside this mode, F.scaled_dot_product_attention runs fewstep's attention (thread-local, no
    global monkey-patching; the mode is disabled inside its own handler, so no recursion)."""

    def __init__(self, impl: str | None = None):
        super().__init__()
        self.impl = impl

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return sdpa_compatible_attention(*args, **kwargs, impl=self.impl)
        if torch.compiler.is_compiling() and getattr(torch.Tensor, getattr(func, "__name__", ""), None) is func:
            # Dynamo cannot inline Python-level Tensor methods that call super() (e.g. unflatten) when
            # handed the function object; as a method call it traces them natively.
            return getattr(args[0], func.__name__)(*args[1:], **kwargs)
        return func(*args, **kwargs)


class JVPAttnProcessor:
    """Runs `inner` unchanged with its softmax attention routed to fewstep (see module docstring)."""

    def __init__(self, inner: Any, impl: str | None = None):
        self.inner = inner
        self.impl = impl

    def unwrap(self) -> Any:
        return self.inner

    def __call__(self, attn: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with RouteSDPA(self.impl), _native_dispatch(self.inner):
            return self.inner(attn, *args, **kwargs)


@contextlib.contextmanager
def _native_dispatch(processor: Any) -> Iterator[None]:
    """Pin a dispatcher-based processor to diffusers' "native" backend (the one calling SDPA) for one
    call; per call rather than at wrap time because one processor instance may serve many modules."""
    if not hasattr(processor, "_attention_backend"):
        yield
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    saved = processor._attention_backend
    processor._attention_backend = AttentionBackendName.NATIVE
    try:
        yield
    finally:
        processor._attention_backend = saved


@functools.cache
def _wrapper_class(inner_cls: type) -> type:
    """A JVPAttnProcessor subclass whose __call__ *signature* is the inner processor's: diffusers drops
    keyword arguments (image_rotary_emb, ...) that the processor signature does not name."""

    @functools.wraps(inner_cls.__call__)
    def __call__(self: JVPAttnProcessor, attn: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return JVPAttnProcessor.__call__(self, attn, *args, **kwargs)

    return type(f"JVP{inner_cls.__name__}", (JVPAttnProcessor,), {"__call__": __call__})


def attention_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for every diffusers attention module (anything holding a `processor`)."""
    for name, module in model.named_modules():
        if hasattr(module, "processor") and hasattr(module, "set_processor"):
            yield name, module


def routes_through_sdpa(processor: Any) -> bool:
    inner = processor.inner if isinstance(processor, JVPAttnProcessor) else processor
    parallel = getattr(inner, "_parallel_config", None) is not None  # context parallel bypasses SDPA
    return not parallel and (type(inner).__name__ in SDPA_PROCESSORS or hasattr(inner, "_attention_backend"))


def enable_jvp_attention(model: nn.Module, impl: str | None = None) -> list[str]:
    """Wrap every SDPA-based attention processor of `model`; returns the wrapped module names.

    Processors without softmax SDPA (linear attention, the classic bmm AttnProcessor) are left as
    they are (forward AD already works through them); nn.Module processors (IP-Adapter) are left
    too, and `check_jvp_support` reports them.
    """
    wrapped = []
    for name, module in attention_modules(model):
        proc = module.processor
        if isinstance(proc, JVPAttnProcessor):
            proc.impl = impl if impl is not None else proc.impl
            wrapped.append(name)
        elif not isinstance(proc, nn.Module) and routes_through_sdpa(proc):
            module.set_processor(_wrapper_class(type(proc))(proc, impl))
            wrapped.append(name)
    return wrapped


def disable_jvp_attention(model: nn.Module) -> None:
    """Put back the processors `enable_jvp_attention` wrapped."""
    for _, module in attention_modules(model):
        if isinstance(module.processor, JVPAttnProcessor):
            module.set_processor(module.processor.unwrap())


@contextlib.contextmanager
def jvp_attention_enabled(model: nn.Module, impl: str | None = None) -> Iterator[nn.Module]:
    """Enable the JVP processors only inside the block (e.g. around the torch.func.jvp tangent pass),
    restoring exactly the processors that were there before."""
    before = {name: module.processor for name, module in attention_modules(model)}
    impls = {name: p.impl for name, p in before.items() if isinstance(p, JVPAttnProcessor)}
    enable_jvp_attention(model, impl)
    try:
        yield model
    finally:
        for name, module in attention_modules(model):
            current, original = module.processor, before.get(name)
            if current is not original and original is not None:
                if isinstance(current, JVPAttnProcessor):
                    current.unwrap()
                module.set_processor(original)
            if name in impls:
                original.impl = impls[name]


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """'sdpa' (diffusers' default PyTorch SDPA), 'fewstep' (JVP kernels), or 'xformers' (diffusers'
    memory-efficient processor; GPU with xformers installed only)."""
    backend = backend.lower()
    if backend == "fewstep":
        enable_jvp_attention(model)
    elif backend == "sdpa":
        disable_jvp_attention(model)
        if any("XFormers" in type(m.processor).__name__ for _, m in attention_modules(model)):
            model.disable_xformers_memory_efficient_attention()
    elif backend == "xformers":
        if importlib.util.find_spec("xformers") is None or not torch.cuda.is_available():
            raise RuntimeError("attention_backend='xformers' needs a CUDA GPU and the xformers package "
                               "(pip install 'fewstep[xformers]'); use 'fewstep' (JVP-capable) or 'sdpa'")
        disable_jvp_attention(model)
        model.enable_xformers_memory_efficient_attention()
    else:
        raise ValueError(f"attention backend must be 'sdpa', 'fewstep' or 'xformers', got {backend!r}")
    return model
