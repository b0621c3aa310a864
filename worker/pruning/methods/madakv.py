"""``madakv``: a reconstruction of MadaKV (Li et al., ACL 2025, arXiv 2506.15724), MadaKV-like.

No code is public; what follows fits the abstract and is named a reconstruction everywhere.
*Modality preference adaptation*: each KV head's preference for vision is the share of its
observation-window attention that lands on visual tokens, π_h. A head keeps
``k_h = slots · π_h / mean(π)`` of its best visual tokens (clamped to [min_keep·slots, slots]).
*Hierarchical compression compensation*: the slots a head gives up are not lost; they hold
merged summaries of that head's evicted tokens (per frame span, as the Recycling Bin builds
them), so every head keeps the same dense length. The paper's cross-layer level is not
reconstructed.
"""

from __future__ import annotations

import torch

from videoqa.worker.model.attention import RowGroup
from videoqa.worker.pruning.base import SHARED_PARAMS, WINDOW, PruneContext, RowSets, ScoredMethod
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam


@register
class MadaKVLike(ScoredMethod):
    name = "madakv"
    description = "MadaKV-like reconstruction: per-head visual budgets from modality preference, compensated."
    params = (
        WINDOW,
        MethodParam("min_keep", "Smallest share of the slots a head keeps as exact tokens", 0.25, 0, 1),
        MethodParam(
            "compensate",
            "Fill a head's freed slots with merged summaries (1) or next-best tokens (0)",
            1,
            0,
            1,
            integer=True,
        ),
        *SHARED_PARAMS,
    )

    def window_groups(self, rows: RowSets) -> list[RowGroup]:
        return [RowGroup("window", rows.window)]

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        window = ctx.to_kv_heads(ctx.stats(layer, "window").mean())  # [H_kv, S]
        visual = window[:, ctx.view(layer).slots.to(window.device)]
        self._preference = (visual.sum(dim=1) / window.sum(dim=1).clamp(min=1e-30)).float().cpu()
        return visual

    def keep_counts(self, scores: torch.Tensor, slots: int, ctx: PruneContext) -> torch.Tensor:
        base = super().keep_counts(scores, slots, ctx)
        if not int(self.compensate):
            return base
        preference = self._preference  # set by score() for this layer, just before
        share = preference / preference.mean().clamp(min=1e-30)
        low = max(1, round(float(self.min_keep) * int(base[0])))
        return (share * base.float()).round().long().clamp(min=low, max=int(base[0]))

    def total_slots(self, keep: torch.Tensor, slots: int, n_visual: int, ctx: PruneContext) -> int:
        return max(slots if int(self.compensate) else int(keep.max()), super().total_slots(keep, slots, n_visual, ctx))
