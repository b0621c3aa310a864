"""``full``: no pruning, the reference every other method is measured against."""

from __future__ import annotations

from videoqa.worker.model.families import TokenLayout
from videoqa.worker.model.generate import ConversationState
from videoqa.worker.pruning.base import PruneResult, PruningMethod
from videoqa.worker.pruning.registry import register


@register
class FullCache(PruningMethod):
    name = "full"
    description = "Keeps every token: the unpruned cache (budget must be 1)."

    def apply(self, state: ConversationState, layout: TokenLayout) -> PruneResult:
        return PruneResult(visual_kept=layout.num_visual_tokens)
