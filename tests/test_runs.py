"""Run directories as generators: `fewstep bench RUN_DIR` end to end with a user feature network."""

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from fewstep import distill
from fewstep.cli import main as fewstep_main
from fewstep.runs import generators_for_run, load_run

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "cd_unet2d_tiny.yaml")


def test_run_dir_generators_and_bench(tmp_path):
    run = tmp_path / "run"
    assert distill.main(["--config", RECIPE, f"run.output_dir={run}", "run.trackers=[]", "run.progress_bar=false",
                         "run.ema_decay=0.5",
                         "model.tiny_options.in_channels=3", "data.shape=[3,8,8]"]) == 0
    setup = load_run(run)
    saved = load_file(run / "checkpoints" / "step-00000004" / "model.safetensors")
    for key, value in setup.student.state_dict().items():
        if key in saved:
            assert torch.equal(value, saved[key]), key
    generators = generators_for_run(run)
    assert sorted(generators) == ["step-00000002", "step-00000002-ema", "step-00000004", "step-00000004-ema"]
    images = generators["step-00000004"](6, 2, 0)
    assert images.shape == (6, 3, 8, 8) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, generators["step-00000004"](6, 2, 0))  # seeded
    assert not torch.equal(images, generators["step-00000002"](6, 2, 0))

    # a user feature network (TorchScript + checksum), as `fewstep bench` takes it
    torch.manual_seed(0)
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                               torch.nn.Flatten()))
    features = tmp_path / "features.pt"
    net.save(str(features))
    digest = hashlib.sha256(features.read_bytes()).hexdigest()
    reference = tmp_path / "ref.npz"
    import numpy as np

    np.savez(reference, images=(np.random.default_rng(0).random((64, 8, 8, 3)) * 255).astype(np.uint8))
    out = tmp_path / "bench"
    code = fewstep_main(["bench", str(run), "--ref", str(reference), "--ref-pixel-range", "uint8", "--steps", "1,2",
                         "--features", "torchscript", "--features-path", str(features), "--features-sha256", digest,
                         "--features-size", "8", "--num-samples", "32", "--batch-size", "16", "--allow-small",
                         "--out-dir", str(out)])
    assert code == 0
    assert (out / "bench.md").is_file() and (out / "bench.png").is_file()
    text = (out / "bench.md").read_text()
    assert "step-00000004" in text and "proxy" in text.lower()
