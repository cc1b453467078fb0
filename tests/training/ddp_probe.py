"""Launched by test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU).

Trains the toy CD recipe for a few steps and writes, per rank, the student's weights and the
noise/time draws of that rank's step generator, so the test can compare ranks. Arguments after the recipe
are config overrides. With PROBE_NAN_RANK=r set, rank r's loss turns NaN from its third step on.
"""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from fewstep.build import build_setup
from fewstep.config import load_config
from fewstep.training.trainer import Trainer, make_accelerator, step_generator


def poison_loss(objective: torch.nn.Module, from_call: int) -> None:
    """Make this rank's loss NaN from its `from_call`-th call on: a divergence only one replica sees."""
    loss, calls = objective.loss, []

    def nan_loss(*args, **kwargs):
        calls.append(1)
        value, logs = loss(*args, **kwargs)
        return (value * float("nan") if len(calls) >= from_call else value), logs
    objective.loss = nan_loss


def main(out_dir: str, max_steps: int, resume: str | None, recipe: str = "cd_toy.yaml", *overrides: str) -> None:
    root = Path(__file__).resolve().parents[2]
    toy = recipe.endswith("_toy.yaml")
    config = load_config(root / "configs" / recipe, [
        f"run.output_dir={out_dir}", f"run.max_steps={max_steps}", "run.trackers=[]", "run.progress_bar=false",
        "run.num_samples=0", "run.ema_decay=0.9", *(["data.batch_size=32"] if toy else ["run.checkpoint_every=0"]),
        *overrides])
    accelerator = make_accelerator(config.run)
    setup = build_setup(config, accelerator.device, accelerator.process_index, accelerator.num_processes)
    if os.environ.get("PROBE_NAN_RANK") == str(accelerator.process_index):
        poison_loss(setup.objective, from_call=3)
    trainer = Trainer(setup.objective, setup.data, config.run, config.optimizers, None, accelerator)
    trainer.fit(resume=resume)
    rank = accelerator.process_index
    draws = torch.rand(8, generator=step_generator(config.run.seed, rank, 0))
    batch = setup.data.next_batch(step_generator(config.run.seed, rank, 0))
    weights = {f"{name}.{k}": v.contiguous() for name, net in setup.objective.trainable_networks().items()
               for k, v in net.state_dict().items() if "teacher" not in k}
    save_file({**weights, "draws": draws, "first_batch": batch.x0,
               "world_size": torch.tensor(accelerator.num_processes)}, f"{out_dir}/rank{rank}.safetensors")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "-" else None,
         *sys.argv[4:])
