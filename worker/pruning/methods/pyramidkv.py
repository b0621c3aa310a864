"""``pyramidkv``: SnapKV scores with budgets that shrink linearly with depth (Cai et al., arXiv
2406.02069; budget rule of KVCache-Factory): layer l keeps ``max − l·(max − min)/(N − 1)``
visual slots with ``min = slots/β`` and ``max = 2·slots − min``, so the mean is the budget.
When ``max`` exceeds the visual tokens (budgets above about 50%), every layer gets ``slots``.

The one method whose layers end with different cache lengths; the attention function rebuilds
each layer's mask, so decoding and follow-ups work (tested).
"""

from __future__ import annotations

from videoqa.worker.pruning.base import PruneContext
from videoqa.worker.pruning.methods.snapkv import SnapKV
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam


@register
class PyramidKV(SnapKV):
    name = "pyramidkv"
    description = "SnapKV scores with a per-layer budget decreasing linearly with depth (same mean)."
    params = (MethodParam("beta", "Ratio of the deepest layer's budget to the mean", 20, 1, 1000), *SnapKV.params)

    def layer_slots(self, layer: int, slots: int, ctx: PruneContext) -> int:
        low = slots / float(self.beta)
        high = 2 * slots - low
        if ctx.num_layers == 1 or high > ctx.visual_seen:
            return slots  # the pyramid does not fit (large budgets): uniform, as SnapKV (kvpress does the same)
        return max(1, round(high - layer * (high - low) / (ctx.num_layers - 1)))
