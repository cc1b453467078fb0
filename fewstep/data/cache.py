"""`fewstep cache`: encode an image dataset's latents (and prompt embeddings) once into shards.

    fewstep cache --data-kind imagefolder --data-path photos/ --resolution 1024 --buckets \\
                  --model path/to/sdxl --out cache/photos --store-dtype float16

Train from it with `data: {kind: latent_cache, path: cache/photos}`. Library API:
`cache_dataset` (writer) and `CachedLatentDataset` (verified reader), re-exported here.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..config import read_recipe
from .cached_latents import CachedLatentDataset
from .config import DataConfig
from .latent_cache import PromptEncoder, cache_dataset
from .loader import build_dataset

__all__ = ["CachedLatentDataset", "add_cache_parser", "cache_dataset", "run_cache"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_cache_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `cache` sub-command on an argparse subparsers object."""
    parser = subparsers.add_parser("cache", help="encode latents + prompt embeddings once into safetensors shards",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="recipe YAML whose data: section names the images (flags below override it)")
    parser.add_argument("--data-kind", choices=("imagefolder", "class_folders"))
    parser.add_argument("--data-path")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--buckets", action="store_true", default=None, help="aspect buckets around resolution**2")
    parser.add_argument("--caption-column")
    parser.add_argument("--model", required=True,
                        help="local diffusers pipeline folder (or a VAE folder with --vae-subfolder '')")
    parser.add_argument("--vae-subfolder", default="vae")
    parser.add_argument("--vae-class", default="AutoencoderKL", help="diffusers class, e.g. AutoencoderDC for SANA")
    parser.add_argument("--out", required=True, help="output folder for shard-*.safetensors + index.json")
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vae-dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--store-dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--no-text", action="store_true", help="cache latents only (no text encoders)")
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(func=run_cache)
    return parser


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    """The data section: --config's, with any --data-* flags on top."""
    raw: dict[str, Any] = {}
    if args.config:
        raw = dict(read_recipe(args.config).get("data") or {})
    flags = {"kind": args.data_kind, "path": args.data_path, "resolution": args.resolution,
             "buckets": args.buckets, "caption_column": args.caption_column}
    raw.update({k: v for k, v in flags.items() if v is not None})
    if raw.get("kind") not in ("imagefolder", "class_folders"):
        raise SystemExit(f"fewstep cache: needs an image source (--data-kind imagefolder|class_folders, or a --config "
                         f"whose data.kind is one of them); got {raw.get('kind')!r}")
    return DataConfig.model_validate(raw)


def _prompt_encoder(args: argparse.Namespace) -> PromptEncoder:
    try:
        from fewstep.models.encoders import load_prompt_encoder
    except ImportError as err:
        raise SystemExit("fewstep cache: text embeddings need fewstep.models.encoders.load_prompt_encoder(model, "
                         f"device=, dtype=) ({err}); pass --no-text to cache latents only") from err
    return load_prompt_encoder(args.model, device=args.device, dtype=DTYPES[args.vae_dtype])


def run_cache(args: argparse.Namespace) -> int:
    """Run the `cache` sub-command; returns a process exit code."""
    import diffusers

    cfg = data_config_from_args(args)
    dataset = build_dataset(cfg)
    vae_class = getattr(diffusers, args.vae_class, None)
    if vae_class is None or not args.vae_class.startswith("Autoencoder"):
        raise SystemExit(f"fewstep cache: --vae-class {args.vae_class!r} is not a diffusers Autoencoder* class")
    vae = vae_class.from_pretrained(args.model, subfolder=args.vae_subfolder or None,
                                    torch_dtype=DTYPES[args.vae_dtype]).to(args.device).eval()
    encode = None if args.no_text or cfg.kind != "imagefolder" else _prompt_encoder(args)
    index = cache_dataset(dataset, vae, encode, args.out, args.shard_size, args.batch_size,
                          dtype=DTYPES[args.store_dtype], num_workers=args.num_workers, overwrite=args.overwrite,
                          source_config={"data": cfg.model_dump(mode="json"), "model": args.model})
    print(f"cached {index['num_samples']} samples in {len(index['shards'])} shards -> {args.out}")
    return 0
