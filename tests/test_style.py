"""Lint: `ruff check` with pyproject's [tool.ruff] settings (pyflakes rules and 120-character lines) passes."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["fewstep", "tests", "benchmarks", "scripts"]


def test_ruff_check_passes():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed; install the test extra (pip install -c constraints.txt -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff check {' '.join(PATHS)} failed:\n{proc.stdout}{proc.stderr}"
