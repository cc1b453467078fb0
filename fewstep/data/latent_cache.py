"""Encode images (VAE) and prompts (text encoders) once; train from safetensors shards.

Why: the VAE and text encoders cost more memory and time than a small student step (SANA's
advice for OOMs is exactly this). Latents are stored already normalised the way diffusers
pipelines feed the transformer/UNet: (mean - shift) * scaling, or (mean - latents_mean) *
scaling / latents_std for VAEs that declare per-channel statistics. We store the posterior
mode, not a sample, so the cache is deterministic.

Layout: out_dir/shard-00000.safetensors ... + out_dir/index.json with counts, per-shard sha256,
the VAE normalisation and any class names. Each shard holds samples of one latent shape
(aspect buckets stay separable); prompts ride along in the shard's string metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from .errors import EmptyDatasetError

CACHE_FORMAT, CACHE_VERSION, INDEX_FILE = "fewstep.latent_cache", 1, "index.json"
CARRIED_KEYS = ("class_labels", "original_size", "crop_top_left")
PromptEncoder = Callable[[list[str]], dict[str, Tensor]]


def _latent_stats(vae_config: Any, latents: Tensor) -> tuple[Any, Any, float]:
    def get(name: str, default: Any = None) -> Any:
        return getattr(vae_config, name, None) if getattr(vae_config, name, None) is not None else default
    shape = (1, -1) + (1,) * (latents.ndim - 2)
    mean, std = get("latents_mean"), get("latents_std")
    if mean is not None and std is not None:
        mean = torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(shape)
        std = torch.tensor(std, dtype=latents.dtype, device=latents.device).view(shape)
        return mean, std, get("scaling_factor", 1.0)
    return get("shift_factor", 0.0), 1.0, get("scaling_factor", 1.0)


def normalize_latents(latents: Tensor, vae_config: Any) -> Tensor:
    """Raw VAE latents -> what the denoiser sees, as diffusers pipelines do before decode's inverse."""
    shift, std, scale = _latent_stats(vae_config, latents)
    return (latents - shift) * scale / std


def denormalize_latents(latents: Tensor, vae_config: Any) -> Tensor:
    """Inverse of normalize_latents: what `vae.decode` expects."""
    shift, std, scale = _latent_stats(vae_config, latents)
    return latents * std / scale + shift


@torch.no_grad()
def encode_images(vae: torch.nn.Module, pixel_values: Tensor) -> Tensor:
    """pixel_values in [-1, 1] -> normalised latents (posterior mode); handles KL and DC autoencoders."""
    param = next(vae.parameters())
    output = vae.encode(pixel_values.to(param.device, param.dtype))
    if hasattr(output, "latent_dist"):
        latents = output.latent_dist.mode()
    else:
        latents = output.latent if hasattr(output, "latent") else output[0]
    return normalize_latents(latents.float(), vae.config)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _batch_order(dataset: Dataset, batch_size: int) -> list[list[int]]:
    """Sequential batches; within one bucket each when the dataset is bucketed (shapes must match)."""
    bucket_ids = getattr(dataset, "bucket_ids", None)
    groups: dict[int, list[int]] = {}
    for index in range(len(dataset)):
        groups.setdefault(bucket_ids[index] if bucket_ids is not None else 0, []).append(index)
    return [members[i:i + batch_size] for _, members in sorted(groups.items())
            for i in range(0, len(members), batch_size)]


class _ShardWriter:
    """Buffers samples per latent shape and writes full shards of `shard_size` samples."""

    def __init__(self, out_dir: Path, shard_size: int):
        self.out_dir, self.shard_size = out_dir, shard_size
        self.buffers: dict[tuple[int, ...], list[tuple[dict[str, Tensor], list[str] | None]]] = {}
        self.shards: list[dict[str, Any]] = []

    def add(self, tensors: dict[str, Tensor], prompts: list[str] | None) -> None:
        shape = tuple(tensors["latents"].shape[1:])
        self.buffers.setdefault(shape, []).append((tensors, prompts))
        while self._buffered(shape) >= self.shard_size:
            self._write(shape, self.shard_size)

    def _buffered(self, shape: tuple[int, ...]) -> int:
        return sum(len(t["latents"]) for t, _ in self.buffers[shape])

    def flush(self) -> None:
        for shape in list(self.buffers):
            if self._buffered(shape):
                self._write(shape, self._buffered(shape))

    def _write(self, shape: tuple[int, ...], count: int) -> None:
        parts = self.buffers[shape]
        merged = {k: torch.cat([t[k] for t, _ in parts]) for k in parts[0][0]}
        prompts = None if parts[0][1] is None else [p for _, ps in parts for p in ps]
        head = {k: v[:count].contiguous() for k, v in merged.items()}
        rest = {k: v[count:] for k, v in merged.items()}
        self.buffers[shape] = [(rest, None if prompts is None else prompts[count:])] if len(rest["latents"]) else []
        path = self.out_dir / f"shard-{len(self.shards):05d}.safetensors"
        metadata = {"prompts": json.dumps(prompts[:count])} if prompts is not None else None
        save_file(head, str(path), metadata=metadata)
        self.shards.append({"file": path.name, "num_samples": count, "latent_shape": list(shape),
                            "bytes": path.stat().st_size, "sha256": _sha256(path)})


def _prompt_embeddings(encode_prompts: PromptEncoder, prompts: list[str]) -> dict[str, Tensor]:
    embeddings = encode_prompts(prompts)
    bad = {k: getattr(v, "shape", type(v)) for k, v in embeddings.items()
           if not isinstance(v, Tensor) or v.ndim == 0 or len(v) != len(prompts)}
    if bad:
        raise ValueError(f"encode_prompts must return dict[str, Tensor] with batch dimension {len(prompts)}; got {bad}")
    return {k: v.detach().cpu() for k, v in embeddings.items()}


def cache_dataset(dataset: Dataset, vae: torch.nn.Module, encode_prompts: PromptEncoder | None, out_dir: str | Path,
                  shard_size: int = 1024, batch_size: int = 16, *, dtype: torch.dtype | None = None,
                  num_workers: int = 0, overwrite: bool = False, source_config: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Encode every sample of `dataset` once into safetensors shards; returns the written index.

    dataset: map-style, samples with "pixel_values" (C,H,W) in [-1,1] and optionally "prompt",
    "class_labels", "original_size", "crop_top_left". dtype: storage dtype of floating tensors
    (e.g. torch.float16 halves the cache); None keeps float32.
    """
    out = Path(out_dir)
    if (out / INDEX_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a latent cache; "
                              "pass overwrite=True (CLI: --overwrite) or another folder")
    if len(dataset) == 0:
        raise EmptyDatasetError("cache_dataset got an empty dataset; nothing to encode")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / INDEX_FILE, *out.glob("shard-*.safetensors")]:
        stale.unlink(missing_ok=True)
    writer = _ShardWriter(out, shard_size)
    loader = DataLoader(dataset, batch_sampler=_batch_order(dataset, batch_size), num_workers=num_workers,
                        collate_fn=default_collate)
    text_keys: list[str] = []
    for batch in loader:
        tensors = {"latents": encode_images(vae, batch["pixel_values"]).cpu()}
        prompts = list(batch["prompt"]) if "prompt" in batch else None
        if encode_prompts is not None and prompts is not None:
            embeddings = _prompt_embeddings(encode_prompts, prompts)
            text_keys = sorted(embeddings)
            tensors.update(embeddings)
        tensors.update({k: batch[k] for k in CARRIED_KEYS if k in batch})
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        writer.add(tensors, prompts)
    writer.flush()
    vae_config = vae.config
    index = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "num_samples": sum(s["num_samples"] for s in writer.shards),
        "shards": writer.shards,
        "config": {
            "vae": {"class": type(vae).__name__, **{k: getattr(vae_config, k, None) for k in
                    ("scaling_factor", "shift_factor", "latents_mean", "latents_std")}},
            "latents": "posterior mode, normalised as diffusers pipelines do", "text_keys": text_keys,
            "dtype": str(dtype or torch.float32), "class_names": getattr(dataset, "class_names", None),
            "source": dict(source_config or {}),
        },
    }
    tmp = out / f".{INDEX_FILE}.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, out / INDEX_FILE)  # the index appears only once every shard is complete
    return index
