"""Run the Triton kernels on CPU through Triton's interpreter when there is no GPU.

TRITON_INTERPRET must be set before `triton.language` is first imported (its standard library is
decorated then; `import diffusers` already imports it). So:
- CUDA present: nothing to do, kernels compile.
- `triton.language` not imported yet (e.g. `pytest tests/kernels`): set TRITON_INTERPRET=1 now. On a
  machine without CUDA nothing else can launch Triton kernels, so other folders are unaffected.
- Imported already (the whole suite in one process): this folder's selected tests run once in a
  child `pytest` with TRITON_INTERPRET=1 from the start, and each test here reports its child result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

HERE = Path(__file__).parent
HAS_CUDA = torch.cuda.is_available()
RESULTS_ENV = "FEWSTEP_KERNEL_TEST_RESULTS"  # set in the child: where to write per-test outcomes


def _interpreter_ready() -> bool:
    if HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1":
        return True
    if "triton.language" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
        return True
    return False


IN_PROCESS = _interpreter_ready()


@pytest.fixture(scope="package")
def device() -> torch.device:
    """Where the kernel tests run: the GPU when there is one (compiled), else CPU (interpreted)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The CI box has 2 cores shared with other jobs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------- child-process mode

_selected: list[str] = []
_child_results: dict[str, dict[str, str]] | None = None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    _selected[:] = [item.nodeid for item in items if HERE in Path(str(item.path)).parents]


def _run_child(rootdir: Path) -> dict[str, dict[str, str]]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "results.json"
        env = {**os.environ, "TRITON_INTERPRET": "1", RESULTS_ENV: str(out)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_selected]
        proc = subprocess.run(cmd, cwd=rootdir, env=env, capture_output=True, text=True)
        if not out.exists():
            raise RuntimeError(f"kernel-test child process wrote no results (rc={proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Any:
    global _child_results
    if IN_PROCESS:
        return None
    if _child_results is None:
        _child_results = _run_child(Path(str(pyfuncitem.config.rootpath)))
    result = _child_results.get(pyfuncitem.nodeid, {"outcome": "failed", "text": "not run by the child process"})
    if result["outcome"] == "skipped":
        pytest.skip(result["text"])
    if result["outcome"] != "passed":
        pytest.fail(f"failed in the TRITON_INTERPRET=1 child process:\n{result['text']}", pytrace=False)
    return True


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """In the child: record each test's outcome (the worst of its setup / call / teardown)."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    results = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    previous = results.get(report.nodeid, {"outcome": "passed", "text": ""})
    if report.outcome != "passed" and previous["outcome"] == "passed":
        text = report.longreprtext if report.outcome == "failed" else str(report.longrepr[-1] if isinstance(
            report.longrepr, tuple) else report.longrepr)
        previous = {"outcome": report.outcome, "text": text}
    results[report.nodeid] = previous
    Path(path).write_text(json.dumps(results))
