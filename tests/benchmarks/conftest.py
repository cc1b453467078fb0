"""Shared set-up for the benchmark-script tests: a tiny training run of a bundled-task recipe, and a benchmark script
run as from the command line with its results folder moved under tmp_path."""

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from fewstep import distill

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_run(tmp_path: Path) -> Callable[..., Path]:
    """tiny_run(recipe, name, steps, *overrides): trains configs/<recipe>.yaml for `steps` updates at batch 4 (a
    checkpoint at the end, no sample grids) into tmp_path/name and returns that run directory."""

    def train(recipe: str, name: str, steps: int, *overrides: str, checkpoint_every: int | None = None) -> Path:
        run = tmp_path / name
        assert distill.main(["--config", str(ROOT / "configs" / f"{recipe}.yaml"), f"run.output_dir={run}",
                             "run.trackers=[]", "run.progress_bar=false", f"run.max_steps={steps}",
                             f"run.checkpoint_every={checkpoint_every or steps}", "run.num_samples=0",
                             "data.batch_size=4", *overrides]) == 0
        return run

    return train


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def run_benchmark(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., ModuleType]:
    """run_benchmark(script, *argv): imports benchmarks/<script>.py, points every RESULTS it sees (common's and its own
    copy) at results_dir, runs its main() with argv as the command line and returns the module."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))

    def run(script: str, *argv: str) -> ModuleType:
        module = importlib.import_module(script)
        monkeypatch.setattr(sys.modules["common"], "RESULTS", results_dir)
        if hasattr(module, "RESULTS"):
            monkeypatch.setattr(module, "RESULTS", results_dir)
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
        module.main()
        return module

    return run
