"""``hae``: a reconstruction of HAE, Hierarchical Adaptive Eviction (Ma et al., arXiv 2602.02197).

The paper's repository holds only a README; this follows it and a third-party review, and is
named a reconstruction everywhere (docs/pruning.md says what is reconstructed and why).

*Dual-Attention Pruning* (prefill): the attention statistics of one early layer (``layer``) over
every prompt query give each token its mean attention (over the queries that can see it) and the
spread of that attention; ``score = mean + variance_weight · std`` (low and flat attention is
what goes first). Visual tokens are evicted first, down to the budget; then, with
``text_ratio`` > 0, a joint stage evicts up to that fraction of the unprotected text (between
the ``sinks`` and the video) together with visual tokens, on scores reweighted so that both
modalities are on one scale (each divided by its modality's mean: visual attention is sparser
than text). The kept index set is computed once and **broadcast to every layer**, so scoring is
paid at one layer and every layer holds the same tokens. Text after the video (the question) is
always kept.

*Dynamic Decoding Eviction Strategy* (decoding): see :mod:`videoqa.worker.pruning.decode_bin`;
``interval`` 0 turns it off.
"""

from __future__ import annotations

import math

import torch

from videoqa.worker.model.attention import RowGroup
from videoqa.worker.model.state import ConversationState
from videoqa.worker.pruning.base import PruneContext, PruneResult, PruningMethod, RowSets
from videoqa.worker.pruning.decode_bin import BinPolicy, DecodeRecycleBin
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam


@register
class HierarchicalAdaptiveEviction(PruningMethod):
    #: One kept set from the whole prompt's statistics, and a decode-time bin that moves entries.
    progressive = False
    name = "hae"
    description = (
        "HAE reconstruction: one early layer's mean+spread of attention picks one kept set for every layer; "
        "during decoding, fading entries move to a bounded recycle bin and return when they recover."
    )
    params = (
        MethodParam("layer", "The layer whose attention statistics choose every layer's kept set", 0, 0, 255, True),
        MethodParam("variance_weight", "score = mean + this × std of a token's attention over queries", 1.0, 0, 100),
        MethodParam("sinks", "Leading tokens never evicted", 4, 0, 4096, integer=True),
        MethodParam("text_ratio", "Joint stage: share of the unprotected text that may go too (0: none)", 0, 0, 1),
        MethodParam(
            "interval", "Decoding: tokens between recycle-bin rounds (0: no decode-time eviction)", 8, 0, 4096, True
        ),
        MethodParam("evict_below", "Decoding: running score (1: uniform attention) that bins an entry", 0.2, 0, 100),
        MethodParam("restore_above", "Decoding: running score above which a binned entry returns", 1.0, 0, 1000),
        MethodParam("decay", "Decoding: how much of the running score each new token keeps", 0.8, 0, 0.999),
        MethodParam("bin_capacity", "Decoding: entries the bin holds before it purges", 64, 0, 1 << 20, integer=True),
        MethodParam("purge", "Decoding: a full bin drops its 0 lowest-scoring or 1 oldest entries", 0, 0, 1, True),
        MethodParam("min_visual", "Decoding: never bin below this share of the visual entries kept", 0.5, 0, 1),
    )

    def scoring_layer(self, num_layers: int) -> int:
        return min(int(self.layer), num_layers - 1)

    def prefill_groups(self, rows: RowSets) -> list[RowGroup]:
        layer = self.scoring_layer(rows.num_layers)
        return [RowGroup("all", rows.all(), layers=frozenset({layer}), moments=True)]

    def token_scores(self, ctx: PruneContext) -> torch.Tensor:
        """``mean + variance_weight·std`` of every prompt token's attention, head-averaged [S]."""
        stats = ctx.stats(self.scoring_layer(ctx.num_layers), "all")
        mean, spread = stats.causal_mean().mean(0), stats.causal_variance().mean(0).sqrt()
        return (mean + float(self.variance_weight) * spread).float().cpu()

    def kept_positions(self, ctx: PruneContext) -> torch.Tensor:
        """The prompt positions every layer keeps, ascending (the broadcast index set)."""
        layout = ctx.layout
        scores = self.token_scores(ctx)
        visual = ctx.visual.cpu()
        slots = max(1, round(self.budget * visual.numel()))
        keep = torch.ones(layout.prompt_length, dtype=torch.bool)
        order = torch.argsort(scores[visual], descending=True, stable=True)
        keep[visual[order[slots:]]] = False  # stage 1: visual tokens first
        text = torch.arange(min(int(self.sinks), layout.visual_start), layout.visual_start)
        extra = math.floor(float(self.text_ratio) * text.numel())
        if extra:  # stage 2: joint text + visual, on per-modality reweighted scores
            alive = visual[keep[visual]]
            pool = torch.cat([text, alive])
            weights = torch.cat([_relative(scores[text]), _relative(scores[alive])])
            candidates = pool[torch.argsort(weights, stable=True)]
            candidates = candidates[: min(extra, candidates.numel() - 1)]  # never the last visual token
            keep[candidates] = False
        return keep.nonzero().flatten()

    def apply(self, state: ConversationState, ctx: PruneContext) -> PruneResult:
        kept = self.kept_positions(ctx)
        for layer in state.cache.layers:
            where = kept.to(layer.keys.device)
            layer.keys = layer.keys[:, :, where].contiguous()
            layer.values = layer.values[:, :, where].contiguous()
        is_visual = torch.zeros(ctx.layout.prompt_length, dtype=torch.bool)
        is_visual[ctx.visual.cpu()] = True
        visual_kept = is_visual[kept]
        if int(self.interval):
            state.extension = DecodeRecycleBin(
                BinPolicy(
                    layer=self.scoring_layer(ctx.num_layers),
                    interval=int(self.interval),
                    evict_below=float(self.evict_below),
                    restore_above=float(self.restore_above),
                    decay=float(self.decay),
                    capacity=int(self.bin_capacity),
                    purge=int(self.purge),
                    min_visual=math.ceil(float(self.min_visual) * int(visual_kept.sum())),
                ),
                visual_kept,
                len(state.cache.layers),
            )
        kept_visual = kept[visual_kept]  # prompt positions of the kept visual tokens
        frame_of = torch.full((ctx.layout.prompt_length,), -1, dtype=torch.long)
        frame_of[ctx.visual.cpu()] = ctx.frame_of.cpu()
        layers = len(state.cache.layers)
        per_frame = torch.bincount(frame_of[kept_visual], minlength=ctx.num_frames) * ctx.num_kv_heads * layers
        lengths = [int(layer.keys.shape[2]) for layer in state.cache.layers]
        return PruneResult(int(visual_kept.sum()), 0, lengths, [int(x) for x in per_frame])


def _relative(scores: torch.Tensor) -> torch.Tensor:
    """Scores divided by their mean: one modality's scale (visual attention is sparser than text's)."""
    return scores / scores.mean().clamp(min=1e-30)
