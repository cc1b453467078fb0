"""load_denoiser from save_pretrained folders round-trips the network and declares the scheduler's path;
missing folders / offline hub ids fail with the fix in the message."""

from __future__ import annotations

import pytest
import torch

from fewstep.diffusion import FlowPath, VPPath
from fewstep.models import load_denoiser
from fewstep.models.tiny import tiny_pipeline, tiny_unet2d


@pytest.mark.parametrize("family,kind", [("sd15", "unet2d_condition"), ("flux", "flux"), ("dit", "dit")])
def test_pipeline_folder_round_trip(tmp_path, family, kind):
    pipe = tiny_pipeline(family)
    pipe.save_pretrained(tmp_path)
    denoiser = load_denoiser(kind, str(tmp_path))
    net = pipe.unet if kind == "unet2d_condition" else pipe.transformer
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(denoiser.model.state_dict()[name], tensor, rtol=0, atol=0)
    if family == "flux":
        assert isinstance(denoiser.path, FlowPath) and denoiser.prediction_type == "flow_prediction"
    else:
        assert isinstance(denoiser.path, VPPath) and denoiser.prediction_type == "epsilon"
        t = torch.tensor([0.0, 500.0, 999.0], dtype=torch.float64)
        ref = pipe.scheduler.alphas_cumprod.double()[t.long()]
        torch.testing.assert_close(denoiser.path.alpha(t) ** 2, ref)


def test_dtype_and_model_folder_with_explicit_path(tmp_path):
    tiny_unet2d().save_pretrained(tmp_path / "net")
    with pytest.raises(FileNotFoundError, match="pass path=... and prediction_type="):
        load_denoiser("unet2d", str(tmp_path / "net"))
    denoiser = load_denoiser("unet2d", str(tmp_path / "net"), dtype=torch.bfloat16,
                             path=VPPath.from_scheduler_config(), prediction_type="sample")
    assert denoiser.model_dtype == torch.bfloat16 and denoiser.prediction_type == "sample"
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = denoiser(x, torch.tensor([3.0, 700.0]), {"class_labels": torch.tensor([1, 2])})
    assert out.dtype == torch.float32


def test_missing_local_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass an existing local folder"):
        load_denoiser("sd3", str(tmp_path / "no" / "such" / "folder"))


def test_offline_uncached_hub_id_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 forbids downloading.*hf download"):
        load_denoiser("flux", "fewstep-test/definitely-not-cached")


def test_unknown_kind_lists_allowed(tmp_path):
    with pytest.raises(ValueError, match="allowed kinds"):
        load_denoiser("wan", str(tmp_path))


def test_adapter_from_pretrained_classmethod(tmp_path):
    from fewstep.models import SanaDenoiser

    pipe = tiny_pipeline("sana")
    pipe.save_pretrained(tmp_path)
    denoiser = SanaDenoiser.from_pretrained(str(tmp_path))
    assert isinstance(denoiser, SanaDenoiser) and isinstance(denoiser.path, FlowPath)
    assert denoiser.prediction_type == "flow_prediction"  # DPMSolverMultistep with use_flow_sigmas
