"""Adapters for diffusers UNets: UNet2DModel (class-conditional or not) and UNet2DConditionModel (SD 1.5, SDXL)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..diffusion import GaussianPath
from .adapter import DiffusersDenoiser
from .base import Cond


def _contiguous_group_norm_inputs(unet: nn.Module) -> None:
    """Forward-mode AD (torch.func.jvp, sCM/rCM) through group_norm fails on the non-contiguous tangents
    that diffusers' attention reshapes produce ("view size is not compatible"); .contiguous() is a no-op
    for the usual contiguous inputs."""
    for module in unet.modules():
        if isinstance(module, nn.GroupNorm) and not getattr(module, "_fewstep_contiguous", False):
            module.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]))
            module._fewstep_contiguous = True


def _unet_taps(unet: nn.Module) -> dict[str, nn.Module]:
    """down_i (output of down block i, before its residuals) and mid: the features GAN heads read."""
    taps = {f"down_{i}": block for i, block in enumerate(unet.down_blocks)}
    if getattr(unet, "mid_block", None) is not None:
        taps["mid"] = unet.mid_block
    return taps


class UNet2DDenoiser(DiffusersDenoiser):
    """diffusers.UNet2DModel; pixel- or latent-space DDPM-style models.

    Class conditioning: cond = {"class_labels": LongTensor(B)}. The null class is `num_classes`, the
    extra last row of the class embedding, so the model must have num_class_embeds = num_classes + 1
    (trained with label dropout to that index). A model without class embeddings is unconditional.
    """

    kind = "unet2d"
    cond_keys = frozenset({"class_labels"})

    def __init__(self, model: nn.Module, path: GaussianPath, prediction_type: str):
        super().__init__(model, path, prediction_type)
        _contiguous_group_norm_inputs(model)
        n_embeds = model.config.num_class_embeds
        if model.config.class_embed_type is not None:
            raise ValueError(f"UNet2DModel class_embed_type={model.config.class_embed_type!r} is not supported; "
                             "use num_class_embeds = num_classes + 1 (label embedding with a null row)")
        self.num_classes: int | None = None if n_embeds is None else n_embeds - 1
        if self.num_classes is not None:
            self.required_keys = frozenset({"class_labels"})

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        cond = self.prepare_cond(cond)
        if self.num_classes is None and "class_labels" in cond:
            raise ValueError("this UNet2DModel has no class embedding (num_class_embeds=None); "
                             "drop cond['class_labels']")
        out = self.model(x_t.to(self.model_dtype), self.model_time(t, x_t),
                         class_labels=cond.get("class_labels"), return_dict=False)[0]
        return out.to(x_t.dtype)

    def null_cond(self, cond: Cond) -> Cond:
        if self.num_classes is None:
            return super().null_cond(cond)  # raises: unconditional model, no CFG
        labels = cond["class_labels"]
        return {**cond, "class_labels": torch.full_like(labels, self.num_classes)}

    def tap_modules(self) -> dict[str, nn.Module]:
        return _unet_taps(self.model)


class UNet2DConditionDenoiser(DiffusersDenoiser):
    """diffusers.UNet2DConditionModel: SD 1.5 style (encoder_hidden_states) and SDXL style
    (addition_embed_type 'text_time': also text_embeds = pooled CLIP-G, time_ids = (B, 6) size/crop ids).

    Null cond: the empty-prompt encoder_hidden_states (and SDXL pooled text_embeds) set via
    set_null_cond; time_ids are kept from the conditional branch, as the SDXL pipeline does.
    """

    kind = "unet2d_condition"
    cond_keys = frozenset({"encoder_hidden_states", "text_embeds", "time_ids"})
    embedding_keys = frozenset({"encoder_hidden_states", "text_embeds"})

    def __init__(self, model: nn.Module, path: GaussianPath, prediction_type: str):
        super().__init__(model, path, prediction_type)
        _contiguous_group_norm_inputs(model)
        self.is_sdxl = model.config.addition_embed_type == "text_time"
        if self.is_sdxl:
            self.required_keys = frozenset({"encoder_hidden_states", "text_embeds", "time_ids"})
            self.text_keys = frozenset({"encoder_hidden_states", "text_embeds"})
        else:
            self.required_keys = self.text_keys = frozenset({"encoder_hidden_states"})
            self.cond_keys = frozenset({"encoder_hidden_states"})

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        cond = self.prepare_cond(cond)
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]} if self.is_sdxl else None
        out = self.model(x_t.to(self.model_dtype), self.model_time(t, x_t),
                         encoder_hidden_states=cond["encoder_hidden_states"],
                         added_cond_kwargs=added, return_dict=False)[0]
        return out.to(x_t.dtype)

    def tap_modules(self) -> dict[str, nn.Module]:
        return _unet_taps(self.model)
