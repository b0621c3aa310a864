"""``csp``: Cross-Self Pruning (Pei et al., arXiv 2412.04652), deduplicated.

Attention is split by the modality of the *query*: cross scores come from text queries (the
question, or the probe prompt when there is none) onto visual keys, self scores from the visual
queries in the last ``window_ratio`` of the prefill onto visual keys; both use n-softmax
(``exp(z_i) / (1 + Σ exp(z_j))``). ``cross_ratio`` of the kept slots go to the best cross
scores, the rest to the best self scores among tokens not yet chosen (the original code could
pick a token twice; here the freed slot goes to the next best). Selection per KV head.
"""

from __future__ import annotations

import torch

from videoqa.worker.model.attention import RowGroup
from videoqa.worker.pruning.base import SHARED_PARAMS, WINDOW, PruneContext, RowSets, ScoredMethod
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam


@register
class CrossSelfPruning(ScoredMethod):
    name = "csp"
    description = "Separate top-k over text->visual and visual->visual attention (n-softmax), deduplicated."
    params = (
        MethodParam("cross_ratio", "Share of kept slots chosen by cross (text->visual) attention", 0.5, 0, 1),
        MethodParam("window_ratio", "Visual query rows: the last fraction of the prefill", 0.1, 0.001, 1),
        WINDOW,
        *SHARED_PARAMS,
    )

    def prefill_groups(self, rows: RowSets) -> list[RowGroup]:
        visual = rows.visual()
        tail = max(1, round(float(self.window_ratio) * rows.prefill_length))
        picked = visual[visual >= rows.prefill_length - tail]
        if picked.numel() == 0:  # a long question pushed the video out of the tail: use its last rows
            picked = visual[-tail:]
        return [RowGroup("self", picked, normalize="softmax1")]

    def window_groups(self, rows: RowSets) -> list[RowGroup]:
        return [RowGroup("cross", rows.window, normalize="softmax1")]

    def _parts(self, layer: int, ctx: PruneContext) -> tuple[torch.Tensor, torch.Tensor]:
        cross = ctx.to_kv_heads(ctx.visual_columns(ctx.stats(layer, "cross").mean(), layer))
        self_ = ctx.to_kv_heads(ctx.visual_columns(ctx.stats(layer, "self").mean(), layer))
        return cross, self_

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        cross, self_ = self._parts(layer, ctx)
        cross, self_ = cross.float().cpu(), self_.float().cpu()
        staying = ctx.view(layer).eligible  # (a progressive step: earlier recycled entries cannot stay)
        hide = lambda x: x if bool(staying.all()) else x.masked_fill(~staying, float("-inf"))  # noqa: E731
        self._current = (hide(cross), hide(self_))
        norm = lambda x: x / x.sum(dim=1, keepdim=True).clamp(min=1e-30)  # noqa: E731
        return norm(cross) + norm(self_)  # used to weight recycled entries

    def select(self, scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        cross, self_ = self._current  # set by score() for this layer, just before
        if not bool(torch.isfinite(scores).all()):  # entries the caller rules out stay out
            shut = ~torch.isfinite(scores)
            cross, self_ = cross.masked_fill(shut, float("-inf")), self_.masked_fill(shut, float("-inf"))
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for row in range(scores.shape[0]):
            k = int(keep[row])
            k_cross = round(k * float(self.cross_ratio))
            mask[row, torch.argsort(cross[row], descending=True, stable=True)[:k_cross]] = True
            rest = self_[row].masked_fill(mask[row], float("-inf"))
            mask[row, torch.argsort(rest, descending=True, stable=True)[: k - k_cross]] = True
        return mask
