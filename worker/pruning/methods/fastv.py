"""``fastv``: the last prompt token's attention at layer K−1 picks the visual tokens (Chen et al.,
ECCV 2024, arXiv 2403.06764).

KV-only approximation: FastV drops the visual *hidden states* from layer K on, so later layers
never compute them; here the full prefill runs and only the cache is pruned. The kept set chosen
at layer K−1 is applied to every layer's cache (FastV keeps layers < K full), so every layer has
the same length and the budget is comparable with the other methods.
"""

from __future__ import annotations

import torch

from videoqa.worker.model.attention import RowGroup
from videoqa.worker.pruning.base import SHARED_PARAMS, PruneContext, RowSets, ScoredMethod
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam


@register
class FastV(ScoredMethod):
    name = "fastv"
    description = "Last prompt token's head-averaged attention at layer K-1 picks the kept set for all layers."
    params = (
        MethodParam("layer", "K: scores come from layer K-1 (clamped to the model)", 2, 1, 256, integer=True),
        *SHARED_PARAMS,
    )

    def _source(self, num_layers: int) -> int:
        return min(int(self.layer), num_layers) - 1

    def window_groups(self, rows: RowSets) -> list[RowGroup]:
        return [RowGroup("last", rows.window[-1:], layers=frozenset({self._source(rows.num_layers)}))]

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        source = self._source(ctx.num_layers)
        return ctx.visual_columns(ctx.stats(source, "last").mean(), layer).mean(dim=0, keepdim=True)
