"""``full``: no pruning, the reference every other method is measured against."""

from __future__ import annotations

from videoqa.worker.model.state import ConversationState
from videoqa.worker.pruning.base import PruneContext, PruneResult, PruningMethod
from videoqa.worker.pruning.registry import register


@register
class FullCache(PruningMethod):
    name = "full"
    description = "Keeps every token: the unpruned cache (budget must be 1)."
    progressive = True  # nothing to compress at any step

    def apply(self, state: ConversationState, ctx: PruneContext) -> PruneResult:
        return PruneResult(visual_kept=ctx.visual_seen, layer_lengths=state.cache_lengths)
