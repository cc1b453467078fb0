"""Train the Animal-MNIST classifier whose penultimate layer is the FD feature space.

Why not Inception: at 28x28 single-channel silhouettes, ImageNet features measure mostly the
upsampling; a classifier trained on this data (as MNIST papers do for "FID") is cheap on CPU,
sees what matters here, and its test accuracy says how much its features can be trusted.
Writes assets/animal_mnist/classifier.safetensors and classifier.json (sha256, accuracy, command).
Usage: python scripts/train_classifier.py [--epochs 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewstep.data.animal_mnist import (CLASSIFIER_MANIFEST_PATH, CLASSIFIER_PATH, AnimalMNIST,  # noqa: E402
                                       SilhouetteClassifier, sha256_file)


@torch.no_grad()
def accuracy(model: SilhouetteClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item()
                  for i in range(0, len(labels), batch))
    return correct / len(labels)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 px, so the features are not brittle to the small misalignments a generator makes."""
    padded = F.pad(images, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    return padded[..., dy:dy + 28, dx:dx + 28]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train, test = AnimalMNIST("train"), AnimalMNIST("test")
    model = SilhouetteClassifier(feature_dim=args.feature_dim)
    steps_per_epoch = len(train) // args.batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for i in range(steps_per_epoch):
            index = order[i * args.batch_size:(i + 1) * args.batch_size]
            logits = model(augment(train.pixel_values[index], generator))
            loss = F.cross_entropy(logits, train.class_labels[index], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        test_acc = accuracy(model, test.pixel_values, test.class_labels)
        print(f"epoch {epoch + 1} loss {loss.item():.3f} test_acc {test_acc:.4f} {time.time() - start:.0f}s",
              flush=True)
    train_acc = accuracy(model, train.pixel_values, train.class_labels)
    CLASSIFIER_PATH.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, CLASSIFIER_PATH)
    manifest = {
        "file": CLASSIFIER_PATH.name, "sha256": sha256_file(CLASSIFIER_PATH),
        "architecture": "fewstep.data.animal_mnist.SilhouetteClassifier", "feature_dim": args.feature_dim,
        "params": sum(q.numel() for q in model.parameters()),
        "test_accuracy": test_acc, "train_accuracy": train_acc, "split": "assets/animal_mnist/split.json",
        "command": "python scripts/train_classifier.py " + " ".join(sys.argv[1:]),
        "hyperparameters": vars(args), "train_seconds": round(time.time() - start, 1),
        "torch": torch.__version__, "date": datetime.date.today().isoformat(),
    }
    CLASSIFIER_MANIFEST_PATH.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
