"""kohya / ComfyUI LoRA export: key naming rules, and re-import by diffusers' own kohya conversion.

Naming rules (what fewstep writes; fewstep/export/lora.py:to_kohya):
  1. one stem per LoRA'd module: <prefix> + the diffusers module path with every '.' replaced by '_'
     prefix 'lora_unet_' for UNets (SD 1.5 / SDXL: kohya sd-scripts' names on the diffusers UNet, which
     ComfyUI maps too), 'lora_transformer_' for transformers (OneTrainer / ComfyUI names for SD3 / FLUX).
  2. three tensors per stem: <stem>.lora_down.weight = peft lora_A (rank x in),
     <stem>.lora_up.weight = peft lora_B * alpha/rank (out x rank), <stem>.alpha = rank (scalar), so every
     loader applies scale alpha/rank = 1 to exactly the trained update.
  3. nothing else in the file (no text-encoder keys, no 'unet.'/'transformer.' prefixes).
diffusers maps rule-1 names back for SD 1.5 / SDXL (_convert_non_diffusers_lora_to_diffusers) and FLUX
(_convert_kohya_flux_lora_to_diffusers, "mixture" branch); for SD3 it has no converter and drops every key
without an error, which fewstep's strict loader converts itself (and would otherwise report).
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from fewstep.export import load_export, read_info
from fewstep.export.families import FAMILIES
from fewstep.models.tiny import tiny_pipeline

KEY = re.compile(r"^(lora_unet_|lora_transformer_)[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux", "sd3"])
def test_kohya_names_and_reimport(family, exported):
    kohya_dir, lora_dir = exported(family, "kohya"), exported(family, "lora")
    kohya = load_file(str(kohya_dir / "lora_kohya.safetensors"))
    peft = load_file(str(lora_dir / "pytorch_lora_weights.safetensors"))
    fam = FAMILIES[family]
    prefix, net = fam.kohya_prefix, fam.network
    assert all(KEY.match(k) for k in kohya), [k for k in kohya if not KEY.match(k)][:5]
    stems = {k.split(".", 1)[0] for k in kohya}
    assert len(kohya) == 3 * len(stems)  # rule 2, rule 3
    assert 2 * len(stems) == len(peft)
    for key, value in peft.items():  # rule 1 and 2, value by value against the diffusers-format export
        module, kind = key.removeprefix(f"{net}.").rsplit(".lora_", 1)
        stem = prefix + module.replace(".", "_")
        target = f"{stem}.lora_down.weight" if kind == "A.weight" else f"{stem}.lora_up.weight"
        assert torch.equal(kohya[target], value), key
        rank = kohya[f"{stem}.lora_down.weight"].shape[0]
        assert float(kohya[f"{stem}.alpha"]) == rank and kohya[f"{stem}.lora_up.weight"].shape[1] == rank

    # re-import: the export's own strict load (fresh base pipeline) and plain diffusers load_lora_weights
    report = read_info(kohya_dir)["verification"]["lora_load"]
    assert report["tensors"] == 2 * len(stems)
    assert report["converted_by"] == ("diffusers" if fam.kohya_reimport else "fewstep")
    plain = tiny_pipeline(family)
    plain.load_lora_weights(str(kohya_dir), weight_name="lora_kohya.safetensors", adapter_name="k")
    reference = load_export(lora_dir, base=tiny_pipeline(family))
    loaded = {n: p for n, p in getattr(plain, net).named_parameters() if ".lora_" in n}
    expected = {n.replace(".fewstep.", ".k."): p for n, p in getattr(reference.pipe, net).named_parameters()
                if ".lora_" in n}
    if fam.kohya_reimport:  # diffusers' kohya conversion recovers every tensor, scale 1
        assert sorted(loaded) == sorted(expected)
        assert all(torch.equal(loaded[n], expected[n]) for n in expected)
    else:  # diffusers silently loads nothing from these names: the failure the strict loader exists for
        assert not loaded
