"""`fewstep export` / `fewstep sample` through their argparse entry points (add_*_parser / run_*)."""

from __future__ import annotations

import argparse
import json

import pytest

from fewstep.export.cli import add_export_parser, add_sample_parser


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fewstep")
    sub = parser.add_subparsers()
    add_export_parser(sub)
    add_sample_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_export_and_sample_cli(trained, tmp_path, capsys):
    run = trained("sd15")
    out = tmp_path / "export"
    assert _main(["export", str(run), "--format", "lora", "--dtype", "bf16", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["verified"] and summary["scheduler"] == "LCMScheduler" and summary["steps"] == [1, 2]
    card = (out / "README.md").read_text()
    assert "method | cd" in card and "tiny:sd15" in card and "timesteps" in card and "recommended steps | 1, 2" in card
    assert _main(["export", str(run), "--format", "lora", "--out", str(out)]) == 2  # exists: no silent overwrite

    images = tmp_path / "images"
    with pytest.warns(UserWarning, match="applies classifier-free guidance twice"):
        code = _main(["sample", "--model", str(out), "--steps", "2", "--prompt", "a cat", "--prompt", "a dog",
                      "--n", "3", "--seed", "1", "--out", str(images), "--guidance", "4"])
    assert code == 0
    assert sorted(p.name for p in images.glob("*.png")) == ["000.png", "001.png", "002.png", "grid.png"]
    meta = json.loads((images / "samples.json").read_text())
    assert meta["timesteps"] == json.loads((out / "fewstep_export.json").read_text())["scheduler"]["steps"]["2"][
        "timesteps"] and meta["prompts"] == ["a cat", "a dog", "a cat"]


def test_sample_run_dir_and_class_export(trained, exported, tmp_path):
    """A run directory is sampled with the trainer's own sampler; a class-conditional full export with the
    shipped scheduler (DiTPipeline cannot take custom timesteps)."""
    assert _main(["sample", "--model", str(trained("dit")), "--steps", "2", "--class", "3", "--n", "2",
                  "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "grid.png").is_file()
    assert _main(["sample", "--model", str(exported("dit", "full", fuse=True)), "--n", "2",
                  "--out", str(tmp_path / "dit")]) == 0
    assert len(list((tmp_path / "dit").glob("0*.png"))) == 2
    assert _main(["sample", "--model", str(tmp_path), "--n", "1", "--out", str(tmp_path / "x")]) == 2


def test_model_card_quotes_only_measured_benchmarks(tmp_path):
    from fewstep.export.card import benchmark_sections

    assert benchmark_sections(tmp_path, "tiny:sd15") == []  # nothing measured: the card says so
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench.md").write_text("| checkpoint | steps | FD |\n|---|---|---|\n| step-4 | 1 | 12.3 |")
    (source, table), = benchmark_sections(tmp_path, "tiny:sd15")
    assert source.endswith("bench.md") and "12.3" in table  # the run's own `fewstep bench` table, verbatim
