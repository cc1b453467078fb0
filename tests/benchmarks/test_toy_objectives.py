"""benchmarks/toy_objectives.py --merge: the named recipes' rows are replaced in place, the others kept as on disk."""

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fake_run(seed: int, sw: float) -> dict:
    return {"seed": seed, "train_steps": 300, "train_seconds": 1.0, "student_sw": {1: sw, 2: sw, 4: None},
            "teacher_euler_sw": {1: 1.271, 2: 1.27, 4: 0.158}}


def test_merge_replaces_only_the_named_recipes(results_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module("toy_objectives")
    monkeypatch.setattr(module, "RESULTS", results_dir)
    monkeypatch.setattr(importlib.import_module("common"), "RESULTS", results_dir)
    monkeypatch.setattr(module, "evaluate", lambda recipe, seed, overrides=(): fake_run(seed, 0.5 + seed))
    old = {"seeds": [0, 1], "rows": [
        {"recipe": f"configs/{r}_toy.yaml", "train_steps": 300, "median_sw": {"1": v, "2": v, "4": None},
         "worst_sw": {"1": v, "2": v, "4": None}, "teacher_euler_sw": {"1": 1.271, "2": 1.27, "4": 0.158}, "runs": []}
        for r, v in (("cd", 0.2), ("add", 0.3), ("ladd", 0.4))]}
    results_dir.mkdir()
    (results_dir / "toy_objectives.json").write_text(json.dumps(old))
    assert module.main(["--recipes", "add", "--seeds", "0,1", "--merge"]) == 0
    rows = json.loads((results_dir / "toy_objectives.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["configs/cd_toy.yaml", "configs/add_toy.yaml", "configs/ladd_toy.yaml"]
    assert rows[1]["median_sw"]["1"] == 1.0 and rows[2]["median_sw"]["1"] == 0.4  # median of 0.5 and 1.5
    table = (results_dir / "toy_objectives.md").read_text()
    assert ("| `configs/add_toy.yaml` | 300 | 1.000 (1.500) |" in table
            and "| `configs/cd_toy.yaml` | 300 | 0.200 (0.200) |" in table)
    with pytest.raises(SystemExit):  # other seeds than the rows on disk
        module.main(["--recipes", "add", "--seeds", "0", "--merge"])
