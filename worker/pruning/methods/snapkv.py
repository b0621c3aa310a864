"""``snapkv``: attention from an observation window, pooled (Li et al., arXiv 2404.14469).

The window is the question (question-aware) or the probe prompt (question-agnostic); scores are
its mean attention per query head, averaged over each GQA group (as kvpress does), smoothed by a
1-D pool over neighbouring visual tokens, and selected per KV head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from videoqa.worker.model.attention import RowGroup
from videoqa.worker.pruning.base import SHARED_PARAMS, WINDOW, PruneContext, RowSets, ScoredMethod
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam

WINDOW_PARAMS = (
    WINDOW,
    MethodParam("kernel", "1-D pooling kernel over neighbouring tokens (1: none)", 5, 1, 63, integer=True),
    MethodParam("max_pool", "Pooling: 0 average, 1 max", 0, 0, 1, integer=True),
)


def pool(scores: torch.Tensor, kernel: int, use_max: bool) -> torch.Tensor:
    """Smooth [rows, n] scores along n with a centred window of ``kernel`` (odd sizes keep length)."""
    if kernel <= 1:
        return scores
    kernel += 1 - kernel % 2
    x = scores[:, None]
    out = F.max_pool1d(x, kernel, 1, kernel // 2) if use_max else F.avg_pool1d(x, kernel, 1, kernel // 2)
    return out[:, 0]


@register
class SnapKV(ScoredMethod):
    name = "snapkv"
    description = "Keeps the visual tokens the observation window (question or probe) attends to, per KV head."
    params = (*WINDOW_PARAMS, *SHARED_PARAMS)

    def window_groups(self, rows: RowSets) -> list[RowGroup]:
        return [RowGroup("window", rows.window)]

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        window = ctx.to_kv_heads(ctx.visual_columns(ctx.stats(layer, "window").mean(), layer))
        return pool(window, int(self.kernel), bool(self.max_pool))
