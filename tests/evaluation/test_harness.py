"""evaluate_generator, bench_table and the fid/bench subcommands, on a tiny feature network."""
from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from fewstep.evaluation.bench import bench_table
from fewstep.evaluation.cli import add_bench_parser, add_fid_parser, run_bench, run_fid
from fewstep.evaluation.features import file_sha256
from fewstep.evaluation.frechet import feature_statistics, frechet_distance
from fewstep.evaluation.harness import evaluate_generator
from fewstep.evaluation.pipeline import FeaturePipeline
from fewstep.evaluation.stats import compute_stats


def toy_generator(n: int, steps: int, seed: int) -> torch.Tensor:
    """Images in [-1, 1] whose blur depends on steps; fully determined by (n, steps, seed)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    return x * (0.5 + 0.5 / steps)


@pytest.fixture
def reference(feature_net):
    images = torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(99)) * 2 - 1
    return compute_stats(images, FeaturePipeline(feature_net, "minus_one_one"), dataset="toy",
                         allow_small=True, keep_features=True, progress=False)


def test_evaluate_generator_equals_direct_computation(feature_net, reference):
    calls = []

    def generate(n, steps, seed):
        calls.append((n, steps, seed))
        return toy_generator(n, steps, seed)

    result = evaluate_generator(generate, [1, 4], reference, feature_net, batch_size=32, num_samples=80,
                                pixel_range="minus_one_one", seed=5, allow_small=True, kid=True, progress=False)
    assert calls == [(32, 1, 5), (32, 1, 37), (16, 1, 69), (32, 4, 5), (32, 4, 37), (16, 4, 69)]
    for row in result["results"]:
        images = torch.cat([toy_generator(n, row["steps"], s) for n, _, s in calls[:3]])
        # same size, so no resize; the clean protocol quantises to uint8 levels
        feats = feature_net(torch.round((images + 1) / 2 * 255)).double().numpy()
        direct = frechet_distance(*feature_statistics(feats), reference.mu, reference.sigma)
        assert row["fd"] == pytest.approx(direct, rel=1e-8)
        assert row["metric"] == "FD-proxy" and row["proxy"] and row["latency_s_per_image"] > 0
        assert "kid_mean" in row
    assert result["results"][0]["fd"] != result["results"][1]["fd"]
    assert result["protocol"]["resize_mode"] == "clean" and result["reference"]["dataset"] == "toy"
    json.dumps(result)  # JSON-able


def test_bench_table_writes_markdown_and_png(tmp_path, feature_net, reference):
    results = [evaluate_generator(toy_generator, [1, 2], reference, feature_net, num_samples=40, batch_size=40,
                                  pixel_range="minus_one_one", allow_small=True, name=name, progress=False)
               for name in ("ckpt-100", "ckpt-200")]
    paths = bench_table(results, tmp_path / "bench")
    text = paths["markdown"].read_text()
    assert "| ckpt-200 | 2 | FD-proxy |" in text and f"{results[0]['results'][1]['fd']:.3f}" in text
    assert imread(paths["plot"]).ndim == 3


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fewstep")
    sub = parser.add_subparsers(dest="command")
    add_fid_parser(sub)
    add_bench_parser(sub)
    return parser.parse_args(argv)


@pytest.fixture
def scripted_features(tmp_path, feature_net):
    """The feature net saved as TorchScript, as a user would pass it on the command line."""
    path = tmp_path / "proj0.pt"  # extractor id = file stem, as in make_feature_net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates jit.script; still supported
        torch.jit.script(feature_net.net).save(str(path))
    return ["--features", "torchscript", "--features-path", str(path), "--features-sha256", file_sha256(path),
            "--features-size", "8", "--features-channels", "1"]


def test_fid_cli_on_sample_files(tmp_path, scripted_features, capsys):
    ref_imgs = (torch.rand(80, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    gen_imgs = toy_generator(70, 2, 3)
    np.savez(tmp_path / "ref.npz", images=ref_imgs.numpy())
    np.savez(tmp_path / "gen.npz", images=gen_imgs.numpy())
    common = ["--ref", str(tmp_path / "ref.npz"), "--ref-pixel-range", "uint8", "--allow-small", *scripted_features]
    args = _parse(["fid", "--gen", str(tmp_path / "gen.npz"), "--pixel-range", "minus_one_one",
                   "--save-ref", str(tmp_path / "ref_stats.npz"), "--out", str(tmp_path / "r.json"), *common])
    assert run_fid(args) == 0
    first = json.loads((tmp_path / "r.json").read_text())["results"][0]["fd"]
    assert "FD-proxy" in capsys.readouterr().out
    # the saved reference stats give the same number
    common[1] = str(tmp_path / "ref_stats.npz")
    args = _parse(["fid", "--gen", str(tmp_path / "gen.npz"), "--pixel-range", "minus_one_one",
                   "--out", str(tmp_path / "r2.json"), *common])
    assert run_fid(args) == 0
    assert json.loads((tmp_path / "r2.json").read_text())["results"][0]["fd"] == pytest.approx(first, rel=1e-12)
    # wrong declared range: one-line error, exit code 2
    args = _parse(["fid", "--gen", str(tmp_path / "gen.npz"), "--pixel-range", "zero_one", *common])
    assert run_fid(args) == 2 and "declares [0.0, 1.0]" in capsys.readouterr().err
    # too few samples without --allow-small
    args = _parse(["fid", "--gen", str(tmp_path / "gen.npz"), "--pixel-range", "minus_one_one",
                   *[a for a in common if a != "--allow-small"]])
    assert run_fid(args) == 2 and "allow-small" in capsys.readouterr().err


def test_bench_cli_with_run_dir_hook(tmp_path, scripted_features, reference):
    reference.save(tmp_path / "ref.npz")
    def student(n, steps, seed):
        return toy_generator(n, steps, seed)

    student.pixel_range = "minus_one_one"  # a generator may declare its own range instead of --pixel-range
    hook = lambda run_dir: {"student": student}  # noqa: E731
    args = _parse(["bench", str(tmp_path / "run"), "--ref", str(tmp_path / "ref.npz"), "--steps", "1,2",
                   "--num-samples", "40", "--batch-size", "20", "--allow-small", *scripted_features])
    # the reference was computed by the in-memory net; the scripted copy has the same id and checksum
    assert run_bench(args, hook) == 0
    out = tmp_path / "run" / "bench"
    assert {p.name for p in out.iterdir()} == {"bench.md", "bench.png", "bench.json"}
    assert [r["steps"] for r in json.loads((out / "bench.json").read_text())[0]["results"]] == [1, 2]
