"""LoRA students through peft, attached the diffusers way (`ModelMixin.add_adapter`), so the
adapter weights are exactly what `pipe.load_lora_weights` expects at export time."""

from __future__ import annotations

from torch import nn

from .base import Denoiser

# attention projections present in every diffusers family we adapt
DEFAULT_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


def add_lora(denoiser: Denoiser, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0,
             target_modules: list[str] | None = None, adapter_name: str = "default") -> list[nn.Parameter]:
    """Freeze the network and add trainable fp32 LoRA adapters; returns the trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    model = getattr(denoiser, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{type(denoiser).__name__} does not wrap a diffusers network; LoRA students need one "
                        "(set student.lora: null for full fine-tuning)")
    denoiser.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                        target_modules=target_modules or DEFAULT_TARGET_MODULES)
    if hasattr(model, "add_adapter"):  # diffusers PeftAdapterMixin: what load_lora_weights expects
        model.add_adapter(config, adapter_name=adapter_name)
    else:  # e.g. UNet2DModel, which has no adapter mixin
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    trainable = [p for n, p in model.named_parameters() if "lora_" in n]
    if not trainable:
        raise ValueError(f"no module of {type(model).__name__} matched LoRA target_modules {config.target_modules}")
    for p in trainable:  # adapters train in fp32 on a bf16 / fp16 network (peft creates them in its dtype)
        p.data = p.data.float()
        p.requires_grad_(True)
    return trainable
