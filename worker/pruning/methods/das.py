"""``das``: Dynamic Attention Subsidy + Recycling Bin, after "Myopia Rectification: KV Cache
Pruning for MLLMs via Dynamic Attention Subsidy and Token Reclamation" (Zhuang et al., CVPR 2026
Findings).

The paper's formulas are not public: this is a reconstruction, and every choice it leaves open is
a parameter (docs/pruning.md, "`das`", says what the paper states, what is ours, and the formulas
in full). Per layer, over the visual tokens j:

- cross score ``c_j``: mean attention from the observation window (the question, or the probe
  prompt when there is none);
- frame→frame score ``r_j``: attention from visual queries (strided to ``visual_rows``), divided
  by how many of those queries could see j, so early tokens get no free mass;
- mix ``s = α·c/Σc + (1−α)·r/Σr``, optionally pooled within each frame span (α is
  ``agnostic_alpha`` when the question is not in the prefill; 0 there skips the probe);
- subsidy ``s'_j = s_j · w_{m(j)}`` for frame span m of M:
  ``subsidy=0`` (position prior) ``w_m = γ^{m/(M−1)}``; ``subsidy=1`` (fitted decay) fits
  ``log mean_m(s) ≈ a − λ·m`` and sets ``w_m = exp(clip(λ, 0, λ_max)·m·(1 − 1/γ))``;
- global top-k over all frames (``quota=0``) or per-frame quotas ∝ each frame's subsidised mass
  (``quota=1``), one kept set per layer shared by the KV heads (``per_head=0``) or per KV head;
- the evicted tokens of each frame fold into ``bins_per_frame`` recycled entries (score-weighted,
  optional ``ln(count)`` mass bias): the Recycling Bin. Off by default: on the quality lab's
  model a recycled entry never paid for the kept token whose slot it takes (docs/quality.md).

With γ = 1 and no bin, this is plain α-mixed top-k (tested).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from videoqa.worker.model.attention import RowGroup
from videoqa.worker.pruning.base import SHARED_PARAMS, WINDOW, PruneContext, RowSets, ScoredMethod
from videoqa.worker.pruning.registry import register
from videoqa.worker.types import MethodParam


def subsidy_weights(
    frame_scores: torch.Tensor, gamma: float, mode: int, lambda_max: float, present: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-frame multipliers [rows, M] from per-frame mean scores [rows, M]. ``present`` [M]: the
    frames that still have entries to score (a progressive step: frames evicted earlier do not
    take part in the fit; every frame keeps its place in time)."""
    rows, frames = frame_scores.shape
    if frames == 1 or gamma == 1.0:
        return torch.ones(rows, frames)
    m = torch.arange(frames, dtype=torch.float32)
    if mode == 0:
        return (gamma ** (m / (frames - 1)))[None].expand(rows, frames)
    if present is not None and not bool(present.all()):
        if int(present.sum()) < 2:
            return torch.ones(rows, frames)
        logs = torch.log(frame_scores[:, present].clamp(min=1e-30))
        at = m[present]
        centred = at - at.mean()
        slope = (logs - logs.mean(dim=1, keepdim=True)) @ centred / (centred @ centred)
    else:
        logs = torch.log(frame_scores.clamp(min=1e-30))
        centred = m - m.mean()
        slope = (logs - logs.mean(dim=1, keepdim=True)) @ centred / (centred @ centred)  # least squares, [rows]
    decay = (-slope).clamp(min=0, max=lambda_max)
    return torch.exp(decay[:, None] * m[None] * (1 - 1 / gamma))


@register
class DynamicAttentionSubsidy(ScoredMethod):
    name = "das"
    description = "Dynamic Attention Subsidy + Recycling Bin (reconstruction of Myopia Rectification, CVPR'26F)."
    params = (
        MethodParam("alpha", "Weight of question->frame attention against frame->frame attention", 0.5, 0, 1),
        MethodParam(
            "agnostic_alpha",
            "alpha when the question is not known yet (the window is the probe prompt; 0: no probe)",
            0.0,
            0,
            1,
        ),
        MethodParam("gamma", "Subsidy strength: last frame's weight relative to the first (1: none)", 2.5, 1, 10),
        MethodParam("subsidy", "0: exponential position prior, 1: fitted-decay variant", 1, 0, 1, integer=True),
        MethodParam("lambda_max", "Cap on the fitted per-frame decay rate (subsidy=1)", 1.0, 0, 10),
        WINDOW,
        MethodParam(
            "visual_rows", "Visual query rows for frame->frame attention (strided)", 128, 1, 1 << 20, integer=True
        ),
        MethodParam("kernel", "Pooling of scores within a frame span (1: none)", 1, 1, 63, integer=True),
        MethodParam(
            "quota", "0: global top-k across frames, 1: per-frame quota from subsidised mass", 1, 0, 1, integer=True
        ),
        MethodParam("per_head", "0: one kept set per layer (head-averaged), 1: per KV head", 0, 0, 1, integer=True),
        MethodParam("skip_first", "Leading layers kept unpruned", 0, 0, 256, integer=True),
        *SHARED_PARAMS,
    )

    def mix(self, question_aware: bool) -> float:
        """α of this prefill: ``alpha`` with the question in the prompt, else ``agnostic_alpha``."""
        return float(self.alpha if question_aware else self.agnostic_alpha)

    def prefill_groups(self, rows: RowSets) -> list[RowGroup]:
        if self.mix(rows.question_aware) >= 1.0:
            return []
        return [RowGroup("visual", rows.visual(int(self.visual_rows)))]

    def window_groups(self, rows: RowSets) -> list[RowGroup]:
        return [RowGroup("window", rows.window)] if self.mix(rows.question_aware) > 0 else []

    def layer_slots(self, layer: int, slots: int, ctx: PruneContext) -> int:
        return ctx.visual_seen if layer < int(self.skip_first) else slots

    def _reduce(self, per_head: torch.Tensor, ctx: PruneContext) -> torch.Tensor:
        return ctx.to_kv_heads(per_head) if int(self.per_head) else per_head.mean(dim=0, keepdim=True)

    def mixed(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        """The α-mixed score before subsidy, [rows, n]."""
        alpha = self.mix(ctx.question_aware)
        total = 0
        if alpha > 0:
            c = self._reduce(ctx.visual_columns(ctx.stats(layer, "window").mean(), layer), ctx).float().cpu()
            total = total + alpha * c / c.sum(dim=1, keepdim=True).clamp(min=1e-30)
        if alpha < 1:
            r = self._reduce(ctx.visual_columns(ctx.stats(layer, "visual").causal_mean(), layer), ctx).float().cpu()
            total = total + (1 - alpha) * r / r.sum(dim=1, keepdim=True).clamp(min=1e-30)
        return self._pool_within_frames(total, self._frame_rows(layer, total.shape[0], ctx))

    @staticmethod
    def _frame_rows(layer: int, rows: int, ctx: PruneContext) -> torch.Tensor:
        """Frame span of each visual entry per score row [rows, n] (one row: the heads agree)."""
        frames = ctx.view(layer).frames
        return frames[:1] if rows == 1 else frames

    def _pool_within_frames(self, scores: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Average-pool each row of ``scores`` [rows, n] within runs of entries of one frame."""
        kernel = int(self.kernel)
        if kernel <= 1:
            return scores
        kernel += 1 - kernel % 2
        out = torch.empty_like(scores)
        for row in range(scores.shape[0]):
            change = torch.ones(frames.shape[1], dtype=torch.bool)
            change[1:] = frames[row, 1:] != frames[row, :-1]
            starts = [*change.nonzero().flatten().tolist(), frames.shape[1]]
            for start, end in itertools.pairwise(starts):
                out[row, start:end] = F.avg_pool1d(
                    scores[row : row + 1, None, start:end], kernel, 1, kernel // 2, count_include_pad=False
                )[0, 0]
        return out

    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        scores = self.mixed(layer, ctx)
        frames = self._frame_rows(layer, scores.shape[0], ctx)
        eligible = ctx.view(layer).eligible[: scores.shape[0]]
        frames = frames.clamp(min=0)
        weights = torch.empty_like(scores)
        for row in range(scores.shape[0]):  # the subsidy over the frames seen so far, per row
            f, ok = frames[row], eligible[row]
            counts = torch.bincount(f[ok], minlength=ctx.num_frames).float()
            frame_mean = torch.zeros(ctx.num_frames).index_add_(0, f[ok], scores[row, ok]) / counts
            present = counts > 0
            w = subsidy_weights(
                frame_mean[None], float(self.gamma), int(self.subsidy), float(self.lambda_max), present
            )[0]
            weights[row] = w[f]
        self._frames = frames
        return scores * weights

    def select(self, scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if not int(self.quota):
            return super().select(scores, keep)
        frames = self._frames  # set by score() for this layer, just before: [rows, n]
        num_frames = int(frames.max()) + 1
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for row in range(scores.shape[0]):
            f = frames[min(row, frames.shape[0] - 1)]
            eligible = torch.isfinite(scores[row])
            sizes = torch.bincount(f[eligible], minlength=num_frames)
            mass = torch.zeros(num_frames).index_add_(0, f, scores[row].clamp(min=0).nan_to_num(0.0))
            quota = _largest_remainder(mass, int(keep[row]), sizes)
            for m in range(num_frames):
                members = ((f == m) & eligible).nonzero().flatten()
                best = members[torch.argsort(scores[row, members], descending=True, stable=True)[: int(quota[m])]]
                mask[row, best] = True
        return mask


def _largest_remainder(mass: torch.Tensor, total: int, capacity: torch.Tensor) -> torch.Tensor:
    """Split ``total`` into integer quotas ∝ ``mass`` without exceeding each frame's ``capacity``."""
    share = mass / mass.sum() if mass.sum() > 0 else torch.full_like(mass, 1 / mass.numel())
    quota = torch.minimum(torch.floor(share * total).long(), capacity)
    while int(quota.sum()) < total:
        room = torch.where(quota < capacity, share * total - quota, torch.tensor(float("-inf")))
        quota[int(torch.argmax(room))] += 1
    return quota
