"""``retentive_kv``: a reconstruction of RetentiveKV (Liu et al., ACL 2026 Findings, arXiv 2605.04075).

The paper publishes no code; this follows its abstract and is named a reconstruction everywhere
(docs/pruning.md says what is reconstructed and why). Eviction becomes "continuous memory
evolution": the tokens an observation-window score (SnapKV's, per KV head) evicts are not lost
but folded into a per-layer, per-KV-head linear-attention state, each with an update gate driven
by the entropy of its attention over the queries that saw it (visual queries of the prefill,
strided to ``visual_rows``): ``β_j = entropy_j ** entropy_power``, entropy normalised to [0, 1].
Later queries read the state through a registered attention function with a training-free gate,
the attention share the evicted tokens held from the window (:mod:`videoqa.worker.pruning.memory`).
"""

from __future__ import annotations

import torch

from videoqa.worker.model.attention import RowGroup
from videoqa.worker.model.state import ConversationState
from videoqa.worker.pruning.base import SHARED_PARAMS, PruneContext, PruneResult, RowSets, ScoredMethod
from videoqa.worker.pruning.memory import RetainedMemory, fold
from videoqa.worker.pruning.methods.snapkv import WINDOW_PARAMS, pool
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam


@register
class RetentiveKV(ScoredMethod):
    name = "retentive_kv"
    description = (
        "RetentiveKV reconstruction: evicted tokens fold into an entropy-gated linear-attention memory read at decode."
    )
    params = (
        *WINDOW_PARAMS,
        MethodParam(
            "visual_rows", "Visual query rows whose attention spread gives each token's entropy", 128, 1, 1 << 20, True
        ),
        MethodParam("entropy_power", "Update gate β = entropy ** power (0: every evicted token weighs 1)", 1.0, 0, 16),
        MethodParam("gate_scale", "Memory gate = this × the evicted tokens' window attention share (≤ 1)", 1.0, 0, 100),
        *SHARED_PARAMS,
    )
    #: Its memory and gate are built once, from the whole prefill's attention.
    progressive = False

    def window_groups(self, rows: RowSets) -> list[RowGroup]:
        return [RowGroup("window", rows.window)]

    def prefill_groups(self, rows: RowSets) -> list[RowGroup]:
        return [RowGroup("spread", rows.visual(int(self.visual_rows)), entropy=True)]

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        window = ctx.to_kv_heads(ctx.visual_columns(ctx.stats(layer, "window").mean(), layer))
        return pool(window, int(self.kernel), bool(self.max_pool))

    def apply(self, state: ConversationState, ctx: PruneContext) -> PruneResult:
        self._memory: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        result = super().apply(state, ctx)
        if self._memory:
            state.extension = RetainedMemory.build(self._memory)
        return result

    def post_select(self, layer, keys, values, kept, ctx: PruneContext):
        """Fold ``layer``'s evicted visual entries into its memory (the cache keeps what is kept)."""
        evicted = ~kept  # [H_kv, n_visual]
        if not bool(evicted.any()):
            return keys, values
        entropy = ctx.to_kv_heads(ctx.visual_columns(ctx.stats(layer, "spread").column_entropy(), layer))
        beta = entropy.to(keys.device) ** float(self.entropy_power) * evicted  # 0 for kept tokens
        state, normalizer = fold(keys, values, beta)
        window = ctx.to_kv_heads(ctx.visual_columns(ctx.stats(layer, "window").mean(), layer)).to(keys.device)
        share = (window * evicted).sum(dim=1)  # [H_kv]: attention the evicted tokens held
        gate = (float(self.gate_scale) * share).clamp(0, 1)
        self._memory[layer] = (state, normalizer, gate.float())  # float32 whatever the cache's dtype
        return keys, values
