"""``streaming_llm``: attention sinks plus the most recent tokens (Xiao et al., arXiv 2309.17453).

Text is always kept (it holds the real sinks, the first tokens of the prompt); among visual
tokens this keeps the first ``n_sink`` and then the most recent ones, i.e. the last frames.
"""

from __future__ import annotations

import torch

from videoqa.worker.pruning.base import SHARED_PARAMS, PruneContext, ScoredMethod
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam


@register
class StreamingLLM(ScoredMethod):
    name = "streaming_llm"
    description = "Keeps the first n_sink visual tokens and the most recent ones (the last frames)."
    params = (MethodParam("n_sink", "Leading visual tokens always kept", 4, 0, 1024, integer=True), *SHARED_PARAMS)

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        order = ctx.view(layer).order[0]  # one kept set for every head: their entries agree
        n = int(order.numel())
        rank = torch.empty(n, dtype=torch.long)
        rank[torch.argsort(order, stable=True)] = torch.arange(n)
        scores = rank.float() / n  # later is better
        scores[rank < int(self.n_sink)] = 2.0  # the earliest visual tokens seen (kept, so still the earliest)
        return scores[None]
