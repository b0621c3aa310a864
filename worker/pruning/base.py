"""The pruning-method interface and the shared machinery every scored method uses.

Conventions (one way everywhere):

- Only visual tokens are pruned; every text token (system prompt, attention sinks, the question)
  is kept. ``budget`` is the fraction of visual tokens whose *slots* remain: a layer keeps
  ``slots = max(1, round(budget · n_visual))`` visual entries, counting recycled ones unless
  ``bins_in_budget`` is 0. The physical cache length and bytes are reported per turn.
- A method scores the visual tokens of each layer, shape [1, n_visual] (one kept set shared by
  all KV heads) or [H_kv, n_visual] (a kept set per KV head). The base takes the top-k, hands the
  evicted tokens to the Recycling Bin when ``bins_per_frame`` > 0, and gathers, so the tensors
  physically shrink. Every layer has the same length unless a method sets per-layer budgets.
- New cache order per layer: text before the video, kept visual tokens (original order), recycled
  entries (frame order), text after the video. Order is free: RoPE is baked into cached keys.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from videoqa.worker.model.attention import GroupStats, Recording, RowGroup
from videoqa.worker.model.families import TokenLayout
from videoqa.worker.model.state import ConversationState
from videoqa.worker.types import MethodParam

#: The observation window of the methods that score with one (the question, or the probe prompt).
WINDOW = MethodParam(
    "window", "Observation window: last query rows of the question or probe", 64, 1, 4096, integer=True
)

#: Parameters every method has: the Recycling Bin is a merger any method can use.
SHARED_PARAMS: tuple[MethodParam, ...] = (
    MethodParam(
        "bins_per_frame", "Recycled entries per frame span folding its evicted tokens (0: none)", 0, 0, 16, integer=True
    ),
    MethodParam(
        "bin_weighting",
        "How evicted tokens are weighted in a recycled entry: 0 score, 1 uniform",
        0,
        0,
        1,
        integer=True,
    ),
    MethodParam("mass_bias", "Add ln(count) to recycled keys' logits at decode (1) or not (0)", 0, 0, 1, integer=True),
    MethodParam(
        "bins_in_budget", "Recycled entries count toward the budget (1) or come on top (0)", 1, 0, 1, integer=True
    ),
)


@dataclass
class RowSets:
    """Query rows a method can ask statistics for.

    ``window`` are the observation-window rows within the *window forward*: the text after the
    video in a question-aware prefill (the question and the assistant prefix), or the probe prompt
    in question-agnostic mode. Prefill rows index the prefill forward.
    """

    layout: TokenLayout
    window: torch.Tensor
    question_aware: bool
    num_layers: int

    @property
    def prefill_length(self) -> int:
        return self.layout.prompt_length

    def visual(self, limit: int | None = None) -> torch.Tensor:
        """Visual rows of the prefill, strided down to at most ``limit`` rows."""
        rows = torch.arange(self.layout.visual_start, self.layout.visual_end)
        if limit is not None and rows.numel() > limit:
            rows = rows[torch.linspace(0, rows.numel() - 1, limit).round().long()]
        return rows

    def all(self) -> torch.Tensor:
        return torch.arange(self.prefill_length)


@dataclass
class PruneContext:
    """Everything a method sees when it prunes one session's cache."""

    layout: TokenLayout
    #: Statistics recorded in the prefill, and in the window forward (the same object when aware).
    prefill: Recording
    window: Recording
    num_layers: int
    num_heads: int
    num_kv_heads: int
    question_aware: bool
    #: Token index of every visual token [n_visual], and its frame span [n_visual].
    visual: torch.Tensor = field(init=False)
    frame_of: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        spans = self.layout.frame_spans
        self.visual = torch.cat([torch.arange(s, e) for s, e in spans])
        self.frame_of = torch.cat([torch.full((e - s,), i, dtype=torch.long) for i, (s, e) in enumerate(spans)])

    @property
    def num_frames(self) -> int:
        return len(self.layout.frame_spans)

    def stats(self, layer: int, name: str) -> GroupStats:
        for record in (self.window, self.prefill):
            if layer in record.stats and name in record.stats[layer]:
                return record.stats[layer][name]
        raise KeyError(f"no {name!r} statistics recorded for layer {layer}")

    def visual_columns(self, per_head: torch.Tensor) -> torch.Tensor:
        """[H, S] → [H, n_visual]."""
        return per_head[:, self.visual.to(per_head.device)]

    def to_kv_heads(self, per_head: torch.Tensor) -> torch.Tensor:
        """Average query heads within each GQA group: [H, ...] → [H_kv, ...]."""
        group = self.num_heads // self.num_kv_heads
        return per_head.reshape(self.num_kv_heads, group, *per_head.shape[1:]).mean(dim=1)


@dataclass
class PruneResult:
    """Visual entries left in the cache (mean over layers), and recycled entries among them."""

    visual_kept: int
    recycled: int = 0
    #: Physical cache length per layer after pruning.
    layer_lengths: list[int] = field(default_factory=list)
    #: Kept visual tokens per frame span, summed over layers and KV heads (diagnostics).
    kept_per_frame: list[int] = field(default_factory=list)


class PruningMethod(ABC):
    """Base class: ``name`` is the stable wire name, ``params`` its tunable parameters."""

    name: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[tuple[MethodParam, ...]] = ()

    def __init__(self, budget: float, **values: float):
        self.budget = budget
        self.values = values

    def __getattr__(self, item: str) -> float:
        values = self.__dict__.get("values", {})
        if item in values:
            return values[item]
        raise AttributeError(item)

    def prefill_groups(self, rows: RowSets) -> list[RowGroup]:
        """Statistics to record during the prefill."""
        return []

    def window_groups(self, rows: RowSets) -> list[RowGroup]:
        """Statistics over the observation window (recorded in the prefill when the question is
        there, else in a probe forward that is rolled back)."""
        return []

    @abstractmethod
    def apply(self, state: ConversationState, ctx: PruneContext) -> PruneResult:
        """Shrink ``state.cache`` in place."""


class ScoredMethod(PruningMethod):
    """Score visual tokens per layer; the base selects, recycles and gathers."""

    params = SHARED_PARAMS

    @abstractmethod
    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        """Scores of the visual tokens, [1, n_visual] (shared selection) or [H_kv, n_visual]."""

    def layer_slots(self, layer: int, slots: int, ctx: PruneContext) -> int:
        """Visual slots of ``layer`` (the same for every layer unless a method overrides it)."""
        return slots

    def keep_counts(self, scores: torch.Tensor, slots: int, ctx: PruneContext) -> torch.Tensor:
        """Kept (not recycled) visual tokens per row of ``scores``: int [rows].

        With recycling inside the budget, each frame span first gets room for one kept token, then
        up to ``bins_per_frame`` recycled entries; the rest of the slots hold kept tokens."""
        bins = int(self.bins_per_frame) * ctx.num_frames
        if bins and int(self.bins_in_budget):
            bins = min(bins, max(0, slots - ctx.num_frames))
            slots -= bins
        return torch.full((scores.shape[0],), slots, dtype=torch.long)

    def total_slots(self, keep: torch.Tensor, slots: int, n_visual: int, ctx: PruneContext) -> int:
        """Visual entries every row ends with: kept plus recycled (equal for all rows)."""
        bins = int(self.bins_per_frame) * ctx.num_frames
        if bins == 0:
            return int(keep.max())
        if int(self.bins_in_budget):
            return max(slots, int(keep.max()))
        return int(min(n_visual, int(keep.max()) + bins))

    def select(self, scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Boolean [rows, n_visual]: each row's ``keep[row]`` best tokens."""
        mask = torch.zeros_like(scores, dtype=torch.bool)
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        for row in range(scores.shape[0]):
            mask[row, order[row, : int(keep[row])]] = True
        return mask

    def post_select(self, layer: int, keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor, ctx: PruneContext):
        """Hook between selection and gather (e.g. merging evicted tokens into kept ones).

        ``keys``/``values`` [H_kv, n_visual, D] are ``layer``'s visual entries, ``kept`` [H_kv, n_visual]."""
        return keys, values

    def apply(self, state: ConversationState, ctx: PruneContext) -> PruneResult:
        from videoqa.worker.pruning.bin import recycle

        layout = ctx.layout
        n_visual = int(ctx.visual.numel())
        slots = max(1, round(self.budget * n_visual))
        lengths, kept_per_frame, recycled_total, visual_total = [], torch.zeros(ctx.num_frames), 0, 0
        biases: dict[int, torch.Tensor] = {}
        for layer_idx, layer in enumerate(state.cache.layers):
            layer_slots = min(n_visual, self.layer_slots(layer_idx, slots, ctx))
            if layer_slots >= n_visual:
                lengths.append(int(layer.keys.shape[2]))
                visual_total += n_visual
                kept_per_frame += torch.bincount(ctx.frame_of, minlength=ctx.num_frames) * ctx.num_kv_heads
                continue
            scores = self.score(layer_idx, ctx).float().cpu()
            keep = self.keep_counts(scores, layer_slots, ctx)
            heads = ctx.num_kv_heads
            kept = self.select(scores, keep)  # [rows, n_visual]
            kept = kept.expand(heads, n_visual) if kept.shape[0] == 1 else kept
            keep = keep.expand(heads) if keep.shape[0] == 1 else keep
            row_scores = scores.expand(heads, n_visual) if scores.shape[0] == 1 else scores
            device = layer.keys.device
            visual_idx = ctx.visual.to(device)
            vk = layer.keys[0][:, visual_idx]  # [H_kv, n_visual, D]
            vv = layer.values[0][:, visual_idx]
            vk, vv = self.post_select(layer_idx, vk, vv, kept.to(device), ctx)
            total = self.total_slots(keep, layer_slots, n_visual, ctx)
            bins = [total - int(k) for k in keep]
            weights = row_scores if int(self.bin_weighting) == 0 else torch.ones_like(row_scores)
            recycled = recycle(vk, vv, ~kept, ctx.frame_of, bins, weights) if any(bins) else None
            rows_k, rows_v, bias = [], [], torch.zeros(heads, layout.visual_start + total)
            for h in range(heads):
                chosen = kept[h].nonzero().flatten().to(device)
                parts_k, parts_v = [vk[h, chosen]], [vv[h, chosen]]
                if recycled is not None and bins[h]:
                    bin_k, bin_v, counts = recycled[h]
                    parts_k.append(bin_k)
                    parts_v.append(bin_v)
                    bias[h, layout.visual_start + int(keep[h]) :] = torch.log(counts.clamp(min=1)).cpu()
                rows_k.append(torch.cat(parts_k))
                rows_v.append(torch.cat(parts_v))
            if recycled is not None:
                recycled_total += sum(bins) / heads
                if int(self.mass_bias):
                    biases[layer_idx] = bias
            before, after = slice(0, layout.visual_start), slice(layout.visual_end, None)
            keys, values = layer.keys[0], layer.values[0]
            new_k = torch.cat([keys[:, before], torch.stack(rows_k), keys[:, after]], dim=1)
            new_v = torch.cat([values[:, before], torch.stack(rows_v), values[:, after]], dim=1)
            layer.keys, layer.values = new_k[None].contiguous(), new_v[None].contiguous()
            lengths.append(int(new_k.shape[1]))
            visual_total += total
            kept_per_frame += torch.bincount(ctx.frame_of[None].expand(heads, -1)[kept], minlength=ctx.num_frames)
        if biases:
            state.attention_bias.update(biases)
        layers = max(1, len(lengths))
        return PruneResult(
            visual_kept=math.ceil(visual_total / layers),
            recycled=math.ceil(recycled_total / layers),
            layer_lengths=lengths,
            kept_per_frame=[int(x) for x in kept_per_frame],
        )
