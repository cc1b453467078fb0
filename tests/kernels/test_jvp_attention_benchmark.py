"""The benchmark script: a clear nonzero exit without CUDA; on CPU a dry run of every path through Triton's
interpreter (so the GPU run does not fail on a bug the CPU could show); on a GPU, a tiny sweep writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import os
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs the real sweep")
def test_cpu_dry_run_runs_every_path_through_the_interpreter(tmp_path: Path) -> None:
    impl_before = os.environ.get("FEWSTEP_ATTENTION_IMPL")
    assert _load().main(["--device", "cpu", "--seq-lens", "40", "--head-dims", "32", "--batch", "1", "--heads", "2",
                         "--e2e-sample-size", "4", "--e2e-layers", "1", "--e2e-heads", "2",
                         "--out", str(tmp_path)]) == 0
    assert os.environ.get("FEWSTEP_ATTENTION_IMPL") == impl_before  # the dry run's kernel routing is undone
    (path,) = tmp_path.glob("jvp_attention-*.json")
    report = json.loads(path.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu (Triton interpreter)"
    (row,) = report["kernels"]
    timed = ("sdpa_forward", "fewstep_forward", "fewstep_forward_jvp_fused", "fewstep_func_jvp", "fewstep_backward",
             "sdpa_backward", "math_func_jvp")
    assert all(row[name]["ms"] > 0 for name in timed)
    for route in ("fused", "func_jvp"):  # bf16 kernels vs the fp32 MATH reference (40 rows: all of them)
        assert row["error_vs_fp32"][route]["o"] < 2e-2 and row["error_vs_fp32"][route]["to"] < 5e-2
    end_to_end = report["end_to_end"]
    assert end_to_end["tokens"] == 4 + 77 and end_to_end["fewstep_func_jvp"]["ms"] > 0
    assert end_to_end["tangent_rel_diff_fewstep_vs_math"] < 5e-2  # the processors' tangent is MATH's
