"""benchmarks/dmd2_memory.py runs end to end on CPU (tiny SDXL / FLUX layouts) through the real Trainer with the
memory options (LoRA student + LoRA fake score, gradient checkpointing, cached embeddings) and writes its JSON."""

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("model", ["sdxl", "flux"])
def test_dmd2_memory_benchmark_smoke_run(model, tmp_path):
    script = runpy.run_path(str(ROOT / "benchmarks" / "dmd2_memory.py"), run_name="dmd2_memory")
    out = tmp_path / "dmd2.json"
    assert script["main"](["--tiny", "--model", model, "--warmup", "1", "--steps", "2", "--rank", "4",
                           "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["fits"] and result["model"] == model and len(result["step_seconds"]) == 2
    assert result["step_seconds_median"] > 0 and result["environment"]["device"].startswith("cpu")
    # only adapters and the GAN head train: far fewer parameters than two network copies would
    assert 0 < result["params"]["trainable"] < result["params"]["teacher"]
