"""How well can a GAN head on a fake score's features tell real images from a student's, per noise level?

A fresh DiscriminatorHead on the frozen fake score's bottleneck tap is trained (Adam, fixed steps) on real
Animal-MNIST train images vs the student's 1-step samples, both noised to one path time t, then scored on
held-out images of both kinds. This is the ceiling a DMD2 / SiDA discriminator works under at that t: it
motivates `objective.gan.time_range` (DMD_README).

    python benchmarks/gan_head_probe.py                    # the bundled benchmark's SiD student (sid_long)
    python benchmarks/gan_head_probe.py --run runs/bundled_task/sid --times 0.05,0.3,0.6,0.9

Writes benchmarks/results/gan_head_probe.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/bundled_task/sid_long", help="a run with a fake score")
    parser.add_argument("--times", default="0.05,0.3,0.6,0.9", help="path times to probe")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num", type=int, default=1024, help="images of each kind (the last 256 held out)")
    args = parser.parse_args()
    torch.manual_seed(0)

    from fewstep.data.animal_mnist import NUM_CLASSES, load_animal_mnist, to_model_range
    from fewstep.evaluation.animal_mnist import generate
    from fewstep.objectives.gan import (DiscriminatorHead, default_tap, discriminator_accuracy, discriminator_loss,
                                     feature_channels)
    from fewstep.runs import load_run

    objective = load_run(args.run).objective
    fake = objective.fake_score
    if fake is None:
        raise SystemExit(f"{args.run} has no fake score to probe (run a dmd / sid / vsd recipe)")
    fake.requires_grad_(False)
    tap = fake.tap if fake.head is not None else default_tap(list(fake.tap_modules()))
    n, held_out = args.num, 256
    generated = generate(lambda z, c: objective.sample(z, 1, c, torch.Generator().manual_seed(1)), n)
    images, labels = load_animal_mnist("train")
    pick = np.random.default_rng(0).permutation(len(images))[:n]
    real, real_labels = to_model_range(images[pick]), torch.as_tensor(labels[pick]).long()
    generated_labels = torch.arange(n) % NUM_CLASSES

    def logits(head, x, y, t_value: float, seed: int):
        t = torch.full((len(x),), t_value)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad(), fake.feature_taps([tap]) as features:
            fake(objective.teacher.path.add_noise(x, noise, t), t, {"class_labels": y})
        return head(features[tap][: len(x)])

    accuracy = {}
    for t_value in (float(v) for v in args.times.split(",")):
        head = DiscriminatorHead(feature_channels(fake.tap_modules()[tap]))
        optimizer = torch.optim.Adam(head.parameters(), lr=args.lr, betas=(0.0, 0.99))
        for step in range(args.steps):
            i = torch.randint(0, n - held_out, (64,))
            loss = discriminator_loss(logits(head, real[i], real_labels[i], t_value, step),
                                      logits(head, generated[i], generated_labels[i], t_value, 10**6 + step))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            rest = slice(n - held_out, n)
            accuracy[t_value] = float(discriminator_accuracy(logits(head, real[rest], real_labels[rest], t_value, 7),
                                                             logits(head, generated[rest], generated_labels[rest],
                                                                    t_value, 8)))
        print(f"t={t_value}: held-out accuracy {accuracy[t_value]:.3f}", flush=True)
    write_result("gan_head_probe", {"run": args.run, "tap": tap, "head_steps": args.steps, "head_lr": args.lr,
                                    "images_per_kind": n, "held_out_per_kind": held_out,
                                    "held_out_accuracy_by_time": accuracy})


if __name__ == "__main__":
    main()
