"""benchmarks/export_latency.py runs end to end (CPU smoke mode: tiny SDXL-layout UNet) and writes its JSON."""

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_latency_benchmark_smoke_run(tmp_path):
    script = runpy.run_path(str(ROOT / "benchmarks" / "export_latency.py"), run_name="export_latency")
    out = tmp_path / "latency.json"
    assert script["main"](["--tiny", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["seconds_median"]) == {"student_1step", "student_4step", "teacher_25step_cfg",
                                             "teacher_50step_cfg"}
    assert result["environment"]["device"].startswith("cpu")
    # 50 CFG evaluations (batch 2) against one: far apart even on a tiny CPU model
    assert result["speedup"]["teacher_25step_cfg / student_1step"] > 5
