"""Shared by the objective tests: the repository root, quiet run overrides, and small toy parts."""

from pathlib import Path

import torch

from fewstep.diffusion import FlowPath
from fewstep.objectives.fake_score import build_fake_score
from fewstep.toy import GaussianMixtureDenoiser, ToyStudent, ring_mixture

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["run.trackers=[]", "run.progress_bar=false", "run.num_samples=0", "run.checkpoint_every=0"]


def class_conditional_toy_parts():
    """(exact 2-class ring teacher, toy student, fake score whose head is re-drawn so it differs from the teacher)."""
    teacher = GaussianMixtureDenoiser(ring_mixture(num_classes=2), FlowPath())
    student = ToyStudent(teacher, hidden=16, depth=2)
    fake = build_fake_score(teacher, ToyStudent(teacher, hidden=16, depth=2))
    with torch.no_grad():
        fake.network.head.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    return teacher, student, fake
