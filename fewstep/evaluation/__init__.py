"""Evaluation: FID / KID / FD with pluggable feature extractors, reference stats, bench.

Only the light numpy/scipy core is imported here; torch-based pieces live in submodules
(features, metrics, stats, harness, bench, cli) and are imported on use.
"""
from fewstep.evaluation.frechet import (
    FrechetResult,
    feature_statistics,
    frechet_distance,
    frechet_distance_detailed,
)

__all__ = ["FrechetResult", "feature_statistics", "frechet_distance", "frechet_distance_detailed"]
