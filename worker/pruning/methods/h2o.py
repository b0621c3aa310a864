"""``h2o``: heavy hitters, the tokens that received the most attention from every prompt query
(Zhang et al., arXiv 2306.14048), evicted once at prefill as the LOOK-M/CSP code bases do.

Scores are raw column sums over all queries, per KV head; they favour early tokens (which more
queries can see): that bias is H2O's, kept on purpose as a baseline.
"""

from __future__ import annotations

import torch

from videoqa.worker.model.attention import RowGroup
from videoqa.worker.pruning.base import SHARED_PARAMS, PruneContext, RowSets, ScoredMethod
from videoqa.worker.pruning.registry import register


@register
class H2O(ScoredMethod):
    name = "h2o"
    description = "Keeps the visual tokens with the largest accumulated attention from all prompt queries."
    params = SHARED_PARAMS
    #: Its score sums attention from every prompt query; a chunk's queries are not all of them.
    progressive = False

    def prefill_groups(self, rows: RowSets) -> list[RowGroup]:
        return [RowGroup("all", rows.all())]

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        return ctx.to_kv_heads(ctx.visual_columns(ctx.stats(layer, "all").colsum, layer))
