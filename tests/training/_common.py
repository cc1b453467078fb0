"""Helpers shared by the training tests."""

import math


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """diffusers' "cosine" schedule (half a cosine after a linear warmup), written out as its lr factor."""
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
