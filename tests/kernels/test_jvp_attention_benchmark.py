"""The benchmark script: a clear nonzero exit without CUDA; on a GPU, a tiny sweep writes its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "jvp_attention.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("jvp_attention_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_exits_nonzero_with_message_without_cuda(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert _load().main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_small_sweep_writes_json(tmp_path: Path) -> None:
    assert _load().main(["--seq-lens", "256", "--head-dims", "64", "--no-end-to-end", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("jvp_attention-*.json")
    report = json.loads(path.read_text())
    assert {"device", "torch", "triton", "date", "command"} <= set(report)
    row = report["kernels"][0]
    assert row["fewstep_forward_jvp_fused"]["ms"] > 0 and row["error_vs_fp32"]["fused"]["to"] < 5e-2
