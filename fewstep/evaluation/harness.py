"""Evaluate generators (any callable) and sample sets against reference statistics.

generate(n, steps, seed) -> N x C x H x W images is the only thing asked of a generator,
so run directories, exported diffusers pipelines and baselines all plug in the same way.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Callable, Collection, Iterable, Sequence

import torch
from torch import Tensor

from fewstep.evaluation.features import FeatureExtractor
from fewstep.evaluation.frechet import frechet_distance_detailed
from fewstep.evaluation.metrics import kernel_inception_distance
from fewstep.evaluation.pipeline import FeaturePipeline
from fewstep.evaluation.stats import (FeatureStats, StatsMeta, StatsMismatchError, check_compatible,
                                      compute_stats, require_enough_samples)

GenerateFn = Callable[[int, int, int], Tensor]


def compare_stats(generated: FeatureStats, reference: FeatureStats, *, allow_small: bool = False,
                  ignore: Collection[str] = (), kid_subsets: int = 100, kid_subset_size: int = 1000,
                  seed: int = 0, fd_method: str = "sqrtm") -> dict[str, Any]:
    """Frechet distance (+ KID when both sides kept features), with guards and fix-up notes.

    fd_method: "sqrtm" (pytorch-fid / clean-fid numerics) or "eigh" (same value, ~4x faster on CPU).
    """
    check_compatible(generated.meta, reference.meta, ignore)
    require_enough_samples(generated.meta.num_samples, allow_small, "generated samples")
    require_enough_samples(reference.meta.num_samples, allow_small, "reference samples")
    fr = frechet_distance_detailed(generated.mu, generated.sigma, reference.mu, reference.sigma, method=fd_method)
    proxy = generated.meta.proxy or reference.meta.proxy
    name = reference.meta.metric_name
    out: dict[str, Any] = {
        "metric": f"{name}-proxy" if proxy else name, "fd": fr.distance, "proxy": proxy,
        "num_samples": generated.meta.num_samples, "reference_samples": reference.meta.num_samples,
        "fd_method": fd_method,
        "notes": fr.notes + ([f"ignored mismatching {sorted(ignore)}"] if ignore else []),
    }
    if generated.features is not None and reference.features is not None:
        out["kid_mean"], out["kid_std"] = kernel_inception_distance(
            reference.features, generated.features, kid_subsets, kid_subset_size, seed)
    return out


def _check_reference_protocol(pipeline: FeaturePipeline, reference: StatsMeta) -> None:
    """Fail before generating anything if the reference was made with another protocol."""
    proto = pipeline.protocol()
    bad = [f"{k}: {proto[k]!r} vs reference {getattr(reference, k)!r}"
           for k in ("extractor_id", "extractor_checksum", "feature_dim", "input_size", "resize_mode")
           if proto[k] != getattr(reference, k)]
    if bad:
        raise StatsMismatchError("the feature pipeline does not match the reference statistics -- " + "; ".join(bad))


def _sync_device() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generate_stats(generate: GenerateFn, steps: int, pipeline: FeaturePipeline, num_samples: int,
                   batch_size: int, seed: int, keep_features: bool, progress: bool = True,
                   ) -> tuple[FeatureStats, float]:
    """Generate num_samples in seeded batches (batch seed = seed + index of its first sample).

    Returns the stats and the mean generation seconds per image, excluding the first batch
    (warm-up: compilation, allocator) when there is more than one.
    """
    timings: list[tuple[float, int]] = []

    def batches() -> Iterable[Tensor]:
        for start in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - start)
            _sync_device()
            t0 = time.perf_counter()
            with torch.no_grad():
                images = generate(count, steps, seed + start)
            _sync_device()
            timings.append((time.perf_counter() - t0, count))
            if images.shape[0] != count:
                raise ValueError(f"generate({count}, {steps}, seed) returned {images.shape[0]} images; "
                                 "it must return exactly n")
            yield images

    stats = compute_stats(batches(), pipeline, dataset=f"generated/steps={steps}", allow_small=True,
                          keep_features=keep_features, total=num_samples, progress=progress)
    timed = timings[1:] if len(timings) > 1 else timings
    return stats, sum(t for t, _ in timed) / sum(n for _, n in timed)


def evaluate_generator(generate: GenerateFn, steps_list: Sequence[int], reference_stats: FeatureStats,
                       feature_extractor: FeatureExtractor, batch_size: int = 64, *, num_samples: int = 50_000,
                       pixel_range: str, seed: int = 0, allow_small: bool = False, kid: bool = False,
                       clamp: bool = False, name: str = "", progress: bool = True,
                       ignore: Collection[str] = (), fd_method: str = "sqrtm") -> dict[str, Any]:
    """FD/FID (and KID) of `generate` at each step count, with sampling latency; a JSON-able dict.

    The resize protocol is the reference's, so the two sides cannot disagree on it.
    """
    require_enough_samples(num_samples, allow_small, "generated samples")
    if kid and reference_stats.features is None:
        raise ValueError("kid=True needs reference stats saved with keep_features=True (--kid when making them)")
    pipeline = FeaturePipeline(feature_extractor, pixel_range, reference_stats.meta.resize_mode, clamp=clamp)
    _check_reference_protocol(pipeline, reference_stats.meta)
    rows = []
    for steps in steps_list:
        stats, latency = generate_stats(generate, int(steps), pipeline, num_samples, batch_size, seed, kid, progress)
        row = compare_stats(stats, reference_stats, allow_small=allow_small, ignore=ignore, seed=seed,
                            fd_method=fd_method)
        rows.append({"steps": int(steps), **row, "latency_s_per_image": latency})
    return {"name": name, "protocol": {**pipeline.protocol(), "pixel_range": pixel_range, "clamp": clamp},
            "reference": asdict(reference_stats.meta), "num_samples": num_samples, "batch_size": batch_size,
            "seed": seed, "results": rows}


def evaluate_samples(samples: FeatureStats, reference_stats: FeatureStats, *, name: str = "",
                     allow_small: bool = False, ignore: Collection[str] = (), fd_method: str = "sqrtm",
                     ) -> dict[str, Any]:
    """Result dict (same shape as evaluate_generator's) for precomputed sample statistics."""
    row = compare_stats(samples, reference_stats, allow_small=allow_small, ignore=ignore, fd_method=fd_method)
    return {"name": name or samples.meta.dataset, "protocol": {k: getattr(samples.meta, k) for k in (
        "extractor_id", "extractor_checksum", "feature_dim", "input_size", "resize_mode", "pixel_range")},
            "reference": asdict(reference_stats.meta), "num_samples": samples.meta.num_samples,
            "results": [{"steps": None, **row}]}


def format_results_table(result: dict[str, Any]) -> str:
    """Plain-text table of one result dict (what the CLI prints)."""
    lines = [f"{result['name'] or 'samples'}  [{result['protocol']['extractor_id']}, resize="
             f"{result['protocol']['resize_mode']}, ref={result['reference']['dataset']}"
             f"/{result['reference']['split']} n={result['reference']['num_samples']}]",
             f"{'steps':>6} {'metric':>12} {'value':>10} {'KID':>10} {'ms/img':>9} {'n':>7}"]
    for row in result["results"]:
        kid = f"{row['kid_mean']:.5f}" if "kid_mean" in row else "-"
        lat = f"{1000 * row['latency_s_per_image']:.3g}" if row.get("latency_s_per_image") is not None else "-"
        steps = "-" if row["steps"] is None else str(row["steps"])
        lines.append(f"{steps:>6} {row['metric']:>12} {row['fd']:>10.3f} {kid:>10} {lat:>9} {row['num_samples']:>7}")
        lines += [f"{'':>6} note: {note}" for note in row["notes"]]
    return "\n".join(lines)
