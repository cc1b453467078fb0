"""DMD2 on full-size architectures: does it fit one GPU, and how long is a step?

    python benchmarks/dmd2_memory.py                      # GPU: SDXL UNet (public config, random weights), 128x128
    python benchmarks/dmd2_memory.py --model flux         # GPU: FLUX.1-dev-size transformer (12B), 128x128 latents
    python benchmarks/dmd2_memory.py --tiny --out /tmp/dmd2_memory.json   # CPU smoke run (tiny SDXL layout)

The shipped recipe (configs/dmd2_sdxl_tiny.yaml / dmd2_flux_tiny.yaml) with the memory options of
fewstep/objectives/DMD_README.md: LoRA student (rank 64), LoRA fake score on the frozen teacher (no second copy),
frozen teacher in bf16, bf16 autocast, gradient checkpointing of the student, cached text embeddings (random
tensors of the real shapes: no text encoder is loaded), 5 fake-score updates per generator update, GAN head on.
Random weights: memory and speed depend on the architecture, not on the values. The real fewstep Trainer runs
`--warmup + --steps` generator steps; step time = median of `time/step_seconds` after the warm-up, peak memory =
`torch.cuda.max_memory_allocated`. A CUDA out-of-memory error is recorded as such (with the peak reached), not
raised. Writes benchmarks/results/dmd2_memory_<model>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLUX_TRANSFORMER, SDXL_UNET, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"sdxl": "dmd2_sdxl_tiny.yaml", "flux": "dmd2_flux_tiny.yaml"}


def build_network(model: str, tiny: bool) -> torch.nn.Module:
    """Tiny: on the CPU in fp32. Full size: built directly on the GPU in bf16 (a 12B fp32 copy on the host would
    take minutes to initialise)."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    from fewstep.models import tiny as tiny_models

    if tiny:
        return tiny_models.tiny_unet2d_condition(sdxl=True) if model == "sdxl" else tiny_models.tiny_flux_transformer()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            return UNet2DConditionModel(**SDXL_UNET) if model == "sdxl" else FluxTransformer2DModel(**FLUX_TRANSFORMER)
    finally:
        torch.set_default_dtype(default)


def cached_embeddings(network: torch.nn.Module, model: str):
    """encode(prompts) -> random embeddings with the real encoders' shapes (a text-embedding cache stand-in)."""
    cfg = network.config

    def encode(prompts: list[str]) -> dict[str, torch.Tensor]:
        n = len(prompts)
        if model == "sdxl":
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            return {"encoder_hidden_states": torch.randn(n, 77, cfg.cross_attention_dim),
                    "text_embeds": torch.randn(n, pooled),
                    "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * n)}
        return {"encoder_hidden_states": torch.randn(n, 512, cfg.joint_attention_dim),
                "pooled_projections": torch.randn(n, cfg.pooled_projection_dim), "guidance": torch.full((n,), 3.5)}

    return encode


def run(model: str, tiny: bool, batch: int, latent: int, warmup: int, steps: int, rank: int) -> dict:
    from fewstep.build import build_student
    from fewstep.config import load_config
    from fewstep.data_sources import SyntheticSource
    from fewstep.models.registry import build_denoiser
    from fewstep.models.schedule import path_from_scheduler_config
    from fewstep.models.tiny import tiny_scheduler
    from fewstep.objectives.registry import build_objective
    from fewstep.training.trainer import Trainer

    cuda = torch.cuda.is_available() and not tiny
    network = build_network(model, tiny)
    channels = network.config.in_channels // (4 if model == "flux" else 1)  # FLUX packs 2x2 patches of 16 channels
    size = 8 if tiny else latent
    with tempfile.TemporaryDirectory() as out:
        config = load_config(REPO / "configs" / RECIPES[model], [
            f"run.output_dir={out}", f"run.max_steps={warmup + steps}", "run.log_every=1", "run.checkpoint_every=0",
            "run.num_samples=0", "run.trackers=[]", "run.progress_bar=false", "run.gradient_checkpointing=true",
            *(["run.mixed_precision=bf16", "model.dtype=bfloat16"] if cuda else []),
            f"student.lora.rank={rank}", "objective.fake_score.mode=lora", f"objective.fake_score.lora_rank={rank}",
            "objective.fake_score_updates=5", f"data.batch_size={batch}", f"data.shape=[{channels},{size},{size}]"])
        path, prediction_type = path_from_scheduler_config(tiny_scheduler(model))  # the family's hub scheduler
        teacher = build_denoiser(config.model.kind, network, path, prediction_type)
        encode = cached_embeddings(network, model)
        teacher.set_null_cond({k: torch.zeros_like(v) for k, v in encode([""]).items() if k in teacher.text_keys})
        student = build_student(teacher, config.student, config.model)
        student.enable_gradient_checkpointing()
        objective = build_objective(config.objective, student, teacher)
        data = SyntheticSource(config.data, encode, "cuda" if cuda else "cpu")
        params = {"teacher": sum(p.numel() for p in network.parameters()),
                  "trainable": sum(p.numel() for p in objective.parameters() if p.requires_grad)}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result = {"model": model, "tiny": tiny, "batch": batch, "latent": [channels, size, size], "lora_rank": rank,
                  "fake_score_updates": 5, "params": params}
        try:
            trainer = Trainer(objective, data, config.run, config.optimizers, config.to_dict())
            trainer.fit()
        except torch.cuda.OutOfMemoryError as err:
            peak = torch.cuda.max_memory_allocated() / 2 ** 30
            return {**result, "fits": False, "error": str(err).splitlines()[0], "peak_gib_at_oom": peak}
        times = [row["time/step_seconds"] for row in trainer.history[warmup:]]
        result.update(fits=True, step_seconds_median=statistics.median(times), step_seconds=times,
                      peak_gib=max(row["memory/peak_gib"] for row in trainer.history) if cuda else None,
                      gpu_total_gib=torch.cuda.get_device_properties(0).total_memory / 2 ** 30 if cuda else None)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(RECIPES), default="sdxl")
    parser.add_argument("--tiny", action="store_true", help="tiny random network on CPU (smoke run, no claim)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--latent", type=int, default=128, help="latent side (128 = 1024 px images)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank of the student and the fake score")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/dmd2_memory_<model>.json)")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --tiny for the CPU smoke run)")
    result = run(args.model, args.tiny, args.batch, args.latent, args.warmup, args.steps, args.rank)
    print(result)
    if args.out:
        import json

        from common import environment

        Path(args.out).write_text(json.dumps({"environment": environment(), **result}, indent=2))
    else:
        write_result(f"dmd2_memory_{args.model}", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
