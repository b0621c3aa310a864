"""``random``: uniformly random visual tokens (seeded), the floor any scorer must beat."""

from __future__ import annotations

import torch

from videoqa.worker.pruning.base import SHARED_PARAMS, PruneContext, ScoredMethod
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam


@register
class RandomPruning(ScoredMethod):
    name = "random"
    description = "Keeps a seeded uniformly random subset of visual tokens (same subset in every layer)."
    params = (MethodParam("seed", "Random seed", 0, 0, 2**31 - 1, integer=True), *SHARED_PARAMS)

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(self.seed))
        return torch.rand(1, ctx.view(layer).size, generator=generator)
