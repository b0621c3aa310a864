"""The quality lab's upper bound: an ``oracle`` that keeps exactly the tokens showing the answer.

Suite v2 knows, for every question, which visual tokens carry its evidence
(:func:`videoqa.lab.suite_v2.evidence_tokens`). The oracle keeps those, then fills the rest of its
budget with seeded random tokens (the same set in every layer and KV head), through the worker's
own selection machinery, one-shot or progressive. Each method in a table is placed between it and
``random`` (chance at the same budget). Tooling only: the worker never builds it.
"""

from __future__ import annotations

import torch

from videoqa.worker.model.families import TokenLayout
from videoqa.worker.model.state import TOKEN, VisualSlots
from videoqa.worker.pruning.base import SHARED_PARAMS, PruneContext, ScoredMethod
from videoqa.worker.types import MethodParam

NAME = "oracle"


class EvidenceOracle(ScoredMethod):
    """Keeps the visual tokens at conversation token indices ``evidence`` first, then random ones."""

    name = NAME
    description = "Lab bound: keeps exactly the tokens that show the answer, then random ones up to the budget."
    params = (MethodParam("seed", "Random seed of the fill", 0, 0, 2**31 - 1, integer=True), *SHARED_PARAMS)

    def __init__(self, budget: float, evidence: torch.Tensor, max_visual: int = 0, **values: float):
        defaults = {p.name: p.default for p in self.params}
        super().__init__(budget, max_visual, **(defaults | values))
        #: Token indices [k] (int64) of the evidence in the conversation.
        self.evidence = evidence

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        """[1, n]: 2 + noise for an evidence token, noise in [0, 1) for the others (so every
        evidence token outranks every other, and the fill is a seeded uniform draw)."""
        view = ctx.view(layer)
        generator = torch.Generator().manual_seed(int(self.seed))
        noise = torch.rand(1, view.size, generator=generator)
        evidence = torch.isin(view.order[0].round().long(), self.evidence)
        return noise + 2.0 * evidence.float()[None]


def evidence_recall(slots: VisualSlots | None, evidence: torch.Tensor) -> float:
    """The share of the evidence tokens (conversation token indices ``evidence`` [k]) still in the
    cache as tokens, averaged over layers and KV heads; a token folded into a recycled entry does
    not count. ``slots`` None: nothing was pruned, all of it is there. What separates "the method
    dropped the evidence" from "the model needed more than the evidence"."""
    if slots is None or evidence.numel() == 0:
        return 1.0
    shares = []
    for layer in slots.layers:
        for kind, order in zip(layer.kind, layer.order, strict=True):
            kept = order[kind == TOKEN].round().long()
            shares.append(torch.isin(evidence, kept).float().mean())
    return float(torch.stack(shares).mean())


def evidence_positions(
    layout: TokenLayout, ordinals: tuple[int, ...], per_span: int, first_index: int = 0
) -> torch.Tensor:
    """Conversation token indices of the visual tokens with ``ordinals`` (in the video's visual
    tokens, prompt order, ``per_span`` per frame span), for a prompt whose first token has index
    ``first_index``. Raises ``ValueError`` when the model's spans do not have ``per_span`` tokens
    (the evidence was computed for another token grid)."""
    spans = layout.frame_spans
    if any(end - start != per_span for start, end in spans):
        sizes = sorted({end - start for start, end in spans})
        raise ValueError(f"the evidence is for {per_span} tokens per frame span; this model makes {sizes}")
    index = [first_index + spans[o // per_span][0] + o % per_span for o in ordinals]
    return torch.tensor(index, dtype=torch.long)
