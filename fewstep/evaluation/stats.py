"""Reference statistics (.npz) that carry the protocol they were computed under.

File format: mu (D,), sigma (D, D) float64, optional features (N, D) float32 for KID,
and meta_json: a JSON string of StatsMeta. np.load(allow_pickle=False) reads it all.
Comparing stats whose extractor, checksum, resize mode or resolution differ is an error
naming the field, since such numbers look valid and are meaningless.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Collection, Iterable

import numpy as np
from torch import Tensor
from tqdm.auto import tqdm

from fewstep.evaluation.images import iter_image_folder, load_tensor_file
from fewstep.evaluation.metrics import FeatureAccumulator
from fewstep.evaluation.pipeline import FeaturePipeline

MIN_SAMPLES = 2048  # below the Inception feature dim the covariance is rank-deficient and FID's bias is large
STATS_FORMAT_VERSION = 1
MUST_MATCH = ("extractor_id", "extractor_checksum", "feature_dim", "input_size", "resize_mode", "resolution")


class StatsMismatchError(ValueError):
    """Two feature statistics were computed under different protocols."""


class TooFewSamplesError(ValueError):
    """Fewer samples than MIN_SAMPLES without allow_small=True."""


@dataclass(frozen=True)
class StatsMeta:
    """How a set of statistics was made; MUST_MATCH fields must agree to compare two sets."""

    extractor_id: str
    extractor_checksum: str
    feature_dim: int
    input_size: int
    resize_mode: str
    resolution: tuple[int, int]
    num_samples: int
    dataset: str = ""
    split: str = ""
    pixel_range: str = ""
    channels: int = 0  # of the source images (informational: greyscale is repeated to RGB for Inception)
    metric_name: str = "FID"
    format_version: int = field(default=STATS_FORMAT_VERSION)

    @property
    def proxy(self) -> bool:
        """True when too few samples for a reportable FID: label results as proxies."""
        return self.num_samples < MIN_SAMPLES


def require_enough_samples(num_samples: int, allow_small: bool, what: str = "samples") -> None:
    """The < 2048 guard: raise unless the caller opted into a proxy number."""
    if num_samples < MIN_SAMPLES and not allow_small:
        raise TooFewSamplesError(f"{num_samples} {what} < {MIN_SAMPLES}: FID is biased and the covariance rank-"
                                 "deficient; use more samples, or pass allow_small=True (--allow-small) to get a "
                                 "result labelled as a proxy")


def check_compatible(a: StatsMeta, b: StatsMeta, ignore: Collection[str] = ()) -> None:
    """Raise StatsMismatchError naming every MUST_MATCH field that differs (except `ignore`)."""
    unknown = set(ignore) - set(MUST_MATCH)
    if unknown:
        raise ValueError(f"cannot ignore {sorted(unknown)}; ignorable fields are {MUST_MATCH}")
    diffs = [f"{k}: {getattr(a, k)!r} vs {getattr(b, k)!r}" for k in MUST_MATCH
             if k not in ignore and getattr(a, k) != getattr(b, k)]
    if diffs:
        raise StatsMismatchError("feature statistics were computed under different protocols -- "
                                 + "; ".join(diffs) + ". Recompute the reference with the same extractor, "
                                 "resize mode and resolution")


@dataclass
class FeatureStats:
    """mu, sigma (float64) + provenance; features kept only when KID is wanted."""

    mu: np.ndarray
    sigma: np.ndarray
    meta: StatsMeta
    features: np.ndarray | None = None

    def save(self, path: str | Path) -> Path:
        """Write the .npz (no pickle); returns the path written."""
        path = Path(path)
        arrays = {"mu": self.mu, "sigma": self.sigma, "meta_json": np.array(json.dumps(asdict(self.meta)))}
        if self.features is not None:
            arrays["features"] = self.features.astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path, assume_meta: StatsMeta | None = None) -> FeatureStats:
        """Read a fewstep stats file; bare mu/sigma files (pytorch-fid, clean-fid) need assume_meta."""
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data.files or "sigma" not in data.files:
                raise ValueError(f"{path} is not a statistics file (no mu/sigma); to use images as the "
                                 "reference, compute stats with stats_from_tensor_file")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
            feats = data["features"] if "features" in data.files else None
            if "meta_json" in data.files:
                raw = json.loads(str(data["meta_json"]))
                raw["resolution"] = tuple(raw["resolution"])
                meta = StatsMeta(**raw)
            elif assume_meta is not None:
                meta = assume_meta
            else:
                raise StatsMismatchError(f"{path} has no fewstep metadata (extractor, resize mode, resolution); "
                                         "pass assume_meta=StatsMeta(...) stating how it was computed")
        return cls(mu, sigma, meta, feats)


def compute_stats(batches: Tensor | Iterable[Tensor], pipeline: FeaturePipeline, *, dataset: str = "",
                  split: str = "", batch_size: int = 64, allow_small: bool = False,
                  keep_features: bool = False, total: int | None = None, progress: bool = True) -> FeatureStats:
    """Stats of an in-memory tensor (batched here) or an iterator of N x C x H x W batches."""
    if isinstance(batches, Tensor):
        images = batches
        total = len(images)
        batches = (images[i:i + batch_size] for i in range(0, total, batch_size))
    acc = FeatureAccumulator(pipeline.num_features, keep_features=keep_features)
    resolution, channels = None, 0
    with tqdm(total=total, desc=f"features {dataset or ''}".strip(), unit="img", disable=not progress) as bar:
        for batch in batches:
            shape = tuple(int(s) for s in batch.shape[-2:])
            if resolution is not None and shape != resolution:
                raise ValueError(f"batches differ in resolution ({resolution} then {shape}); "
                                 "evaluate one resolution at a time")
            resolution, channels = shape, int(batch.shape[1])
            acc.update(pipeline(batch))
            bar.update(len(batch))
    if resolution is None:
        raise ValueError("no images were given (empty tensor or iterator)")
    require_enough_samples(acc.num_samples, allow_small, f"samples in {dataset or 'the image set'}")
    mu, sigma = acc.statistics()
    proto = pipeline.protocol()
    meta = StatsMeta(**{k: proto[k] for k in ("extractor_id", "extractor_checksum", "feature_dim", "input_size",
                                              "resize_mode", "metric_name")},
                     resolution=resolution, num_samples=acc.num_samples, dataset=dataset, split=split,
                     pixel_range=pipeline.pixel_range, channels=channels)
    return FeatureStats(mu, sigma, meta, acc.features())


def stats_from_folder(folder: str | Path, pipeline: FeaturePipeline, *, grayscale: bool = False,
                      limit: int | None = None, batch_size: int = 64, **kwargs) -> FeatureStats:
    """Stats of an image folder (decoded to uint8; the pipeline must declare pixel_range='uint8')."""
    if pipeline.pixel_range != "uint8":
        raise ValueError("image files decode to uint8: build the FeaturePipeline with pixel_range='uint8'")
    kwargs.setdefault("dataset", Path(folder).name)
    return compute_stats(iter_image_folder(folder, batch_size, grayscale, limit), pipeline, **kwargs)


def stats_from_tensor_file(path: str | Path, pipeline: FeaturePipeline, *, key: str | None = None,
                           channels_last: bool | None = None, **kwargs) -> FeatureStats:
    """Stats of images stored in .npz / .safetensors (range as declared by the pipeline)."""
    kwargs.setdefault("dataset", Path(path).stem)
    return compute_stats(load_tensor_file(path, key, channels_last), pipeline, **kwargs)

