"""Scoring without chosen attention heads: does a method's result depend on the heads the demo
model's training supervised?

The demo model is trained with an evidence-attention loss on one head (head 0 of layer 1, see
docs/quality.md). That head looks at the evidence by construction, so a method that reads it may
look better than it would on a model trained without it. :func:`leave_out` gives a method whose
statistics of those heads are replaced, before it scores, by the mean of the other heads of their
layer: whatever averages over heads then sees only the others, and a per-head method sees for
that head what the layer's other heads agree on. Tooling only (``videoqa eval --leave-out-heads``).
"""

from __future__ import annotations

from videoqa.worker.model.attention import GroupStats, Recording
from videoqa.worker.model.state import ConversationState
from videoqa.worker.pruning.base import PruneContext, PruneResult, PruningMethod


def parse_heads(text: str) -> dict[int, tuple[int, ...]]:
    """``"1:0,2:3"`` -> ``{1: (0,), 2: (3,)}`` (layer: query heads)."""
    heads: dict[int, list[int]] = {}
    for item in filter(None, text.split(",")):
        layer, sep, head = item.partition(":")
        if not sep:
            raise ValueError(f"head {item!r} is not LAYER:HEAD")
        heads.setdefault(int(layer), []).append(int(head))
    return {layer: tuple(sorted(set(h))) for layer, h in heads.items()}


def neutralized(stats: GroupStats, heads: tuple[int, ...]) -> GroupStats:
    """``stats`` with rows ``heads`` of every [H, S] tensor replaced by the other rows' mean."""

    def fix(tensor):
        if tensor is None:
            return None
        others = [h for h in range(tensor.shape[0]) if h not in heads]
        if not others:
            raise ValueError("cannot leave out every head of a layer")
        out = tensor.clone()
        out[list(heads)] = tensor[others].mean(dim=0, keepdim=True)
        return out

    return GroupStats(fix(stats.colsum), stats.visible, stats.rows, fix(stats.colsq), fix(stats.colplogp))


def _neutralize(record: Recording, heads: dict[int, tuple[int, ...]]) -> None:
    for layer, chosen in heads.items():
        for name, stats in record.stats.get(layer, {}).items():
            record.stats[layer][name] = neutralized(stats, chosen)


def leave_out(method: PruningMethod, heads: dict[int, tuple[int, ...]]) -> PruningMethod:
    """``method`` (same parameters and state) scoring without ``heads`` (layer: query heads)."""
    base = type(method)

    class WithoutHeads(base):  # type: ignore[misc, valid-type]
        def apply(self, state: ConversationState, ctx: PruneContext) -> PruneResult:
            _neutralize(ctx.prefill, heads)
            if ctx.window is not ctx.prefill:
                _neutralize(ctx.window, heads)
            return super().apply(state, ctx)

    WithoutHeads.__name__ = WithoutHeads.__qualname__ = f"{base.__name__}WithoutHeads"
    variant = WithoutHeads.__new__(WithoutHeads)
    variant.__dict__.update(method.__dict__)
    return variant
