"""Distillation objectives: each a small class whose loss reads like its paper."""

from .base import Batch, Objective, Phase
from .consistency import BoundaryCondition, ConsistencyDistillation

__all__ = ["Batch", "Objective", "Phase", "BoundaryCondition", "ConsistencyDistillation"]
