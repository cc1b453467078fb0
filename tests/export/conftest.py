"""Tiny runs trained once per session (2 CD steps through fewstep.distill.main, LoRA rank 4) and exports
of them, shared by the export tests."""

from pathlib import Path

import pytest
import torch

from fewstep import distill

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """family -> run dir; recipe configs/cd_<family>_tiny.yaml, 2 steps. lora=False trains the full network."""
    cache: dict[tuple[str, bool], Path] = {}

    def get(family: str, lora: bool = True) -> Path:
        key = (family, lora)
        if key not in cache:
            run = tmp_path_factory.mktemp(f"run_{family}_{'lora' if lora else 'full'}")
            overrides = [f"run.output_dir={run}", "run.trackers=[]", "run.progress_bar=false", "run.max_steps=2",
                         "run.checkpoint_every=0", "run.num_samples=1", "run.sample_steps=[1,2]"]
            if lora:
                overrides.append("student.lora.rank=4")
            before = torch.get_num_threads()
            try:
                assert distill.main(["--config", str(ROOT / "configs" / f"cd_{family}_tiny.yaml"), *overrides]) == 0
            finally:
                torch.set_num_threads(before)
            cache[key] = run
        return cache[key]

    return get


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """(family, format, options...) -> export folder, exported once per session."""
    from fewstep.export import export_run

    cache: dict[tuple, Path] = {}

    def get(family: str, fmt: str, lora: bool = True, **options) -> Path:
        key = (family, fmt, lora, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("exports") / f"{family}-{fmt}"
            cache[key] = export_run(trained(family, lora), fmt, out, **options)
        return cache[key]

    return get
