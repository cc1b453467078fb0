"""JVP-capable flash attention (Triton) and the diffusers integration that routes models to it.

Nothing here imports triton at package import; kernels are compiled (or interpreted, under
TRITON_INTERPRET=1) on first use. See README.md in this folder for the math and the API.
"""

from .checks import JVPUnsupportedError, check_jvp_support, fd_jvp
from .jvp_attention import attention, attention_jvp, math_attention, resolve_impl
from .processors import (
    JVPAttnProcessor,
    disable_jvp_attention,
    enable_jvp_attention,
    jvp_attention_enabled,
    register_sdpa_processor,
    sdpa_compatible_attention,
    set_attention_backend,
)

__all__ = [
    "JVPAttnProcessor",
    "JVPUnsupportedError",
    "attention",
    "attention_jvp",
    "check_jvp_support",
    "disable_jvp_attention",
    "enable_jvp_attention",
    "fd_jvp",
    "jvp_attention_enabled",
    "math_attention",
    "register_sdpa_processor",
    "resolve_impl",
    "sdpa_compatible_attention",
    "set_attention_backend",
]
