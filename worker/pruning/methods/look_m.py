"""``look_m``: text-prior eviction with merging (Wan et al., EMNLP 2024 Findings, arXiv 2406.18139).

Heavy-hitter scores (column sums over all prompt queries, per KV head); text is always kept
(LOOK-M's text prior), the most recent ``recent_ratio`` of visual tokens too; the rest compete
on score. Evicted tokens are not simply dropped: with ``merge`` each is averaged into the kept
visual token whose key is most cosine-similar (pivot merge, post-RoPE keys), so no entry is
added. The Recycling Bin can be enabled on top.
"""

from __future__ import annotations

import torch

from videoqa.worker.model.attention import RowGroup
from videoqa.worker.pruning.base import SHARED_PARAMS, PruneContext, RowSets, ScoredMethod
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam


def pivot_merge(keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor):
    """Average each evicted entry into its most key-similar kept entry, per head.

    ``keys``/``values`` [H, n, D], ``kept`` [H, n] bool. A kept target becomes the mean of itself
    and every evicted entry that chose it; evicted entries are left for the caller to drop."""
    keys, values = keys.clone(), values.clone()
    for h in range(keys.shape[0]):
        kept_idx, evicted_idx = kept[h].nonzero().flatten(), (~kept[h]).nonzero().flatten()
        if kept_idx.numel() == 0 or evicted_idx.numel() == 0:
            continue
        unit = torch.nn.functional.normalize(keys[h].float(), dim=-1)
        target = kept_idx[(unit[evicted_idx] @ unit[kept_idx].T).argmax(dim=1)]
        for tensor in (keys, values):
            total = tensor[h].float().index_add(0, target, tensor[h, evicted_idx].float())
            count = torch.ones(tensor.shape[1], device=tensor.device).index_add(
                0, target, torch.ones_like(target, dtype=torch.float32)
            )
            tensor[h, kept_idx] = (total[kept_idx] / count[kept_idx, None]).to(tensor.dtype)
    return keys, values


@register
class LookM(ScoredMethod):
    name = "look_m"
    description = "Heavy-hitter scores plus a recent block; evicted tokens merge into their most similar kept token."
    params = (
        MethodParam("recent_ratio", "Fraction of visual tokens, the latest, always kept", 0.1, 0, 1),
        MethodParam("merge", "Pivot-merge evicted tokens into kept ones (1) or drop them (0)", 1, 0, 1, integer=True),
        *SHARED_PARAMS,
    )
    #: Heavy-hitter scores over every prompt query, and merging rewrites kept entries.
    progressive = False

    def prefill_groups(self, rows: RowSets) -> list[RowGroup]:
        return [RowGroup("all", rows.all())]

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        scores = ctx.to_kv_heads(ctx.visual_columns(ctx.stats(layer, "all").colsum, layer))
        recent = round(float(self.recent_ratio) * scores.shape[1])
        if recent:
            scores[:, scores.shape[1] - recent :] = scores.max() + 1.0
        return scores

    def post_select(self, layer, keys, values, kept, ctx: PruneContext):
        return pivot_merge(keys, values, kept) if int(self.merge) else (keys, values)
