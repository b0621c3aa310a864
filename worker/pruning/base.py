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
from videoqa.worker.model.state import RECYCLED, TEXT, TOKEN, ConversationState, LayerSlots, VisualSlots
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


#: Fewest strided visual rows a prefill chunk records (see ``RowSets.share``).
CHUNK_ROWS = 32


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
    #: The share of the video's visual tokens these rows' forward holds (a prefill chunk: less
    #: than 1). A strided row limit is a limit for the whole video: a chunk gets its share of it,
    #: but at least :data:`CHUNK_ROWS` rows (or all of its rows).
    share: float = 1.0

    @property
    def prefill_length(self) -> int:
        return self.layout.prompt_length

    def visual(self, limit: int | None = None) -> torch.Tensor:
        """Visual rows of the prefill, strided down to at most ``limit`` rows (this forward's part of it)."""
        rows = torch.cat([torch.arange(s, e) for s, e in self.layout.frame_spans])
        if limit is not None and self.share < 1:
            limit = max(min(CHUNK_ROWS, rows.numel()), round(limit * self.share))
        if limit is not None and rows.numel() > limit:
            rows = rows[torch.linspace(0, rows.numel() - 1, limit).round().long()]
        return rows

    def all(self) -> torch.Tensor:
        return torch.arange(self.prefill_length)


@dataclass
class LayerView:
    """The visual entries of one layer as a compression step sees them (CPU tensors).

    ``slots`` [n] are the cache entries that are visual in some KV head (ascending); per head
    [H_kv, n]: ``eligible`` (a visual token: it competes to stay), ``recycled`` (an entry that
    folds earlier evicted tokens: it leaves and is folded again with this step's evictions),
    ``frames``, ``order`` (token index), ``counts`` and ``weights`` (see ``LayerSlots``). After
    a one-shot prefill every visual token is eligible in every head and nothing is recycled yet."""

    slots: torch.Tensor
    eligible: torch.Tensor
    recycled: torch.Tensor
    frames: torch.Tensor
    order: torch.Tensor
    counts: torch.Tensor
    weights: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.slots.numel())

    @property
    def entries(self) -> int:
        """Visual entries per head (tokens and recycled; equal in every head)."""
        return int((self.eligible | self.recycled).sum(dim=1).max()) if self.size else 0

    @classmethod
    def of_tokens(cls, slots: torch.Tensor, frames: torch.Tensor, order: torch.Tensor, heads: int) -> LayerView:
        """Every one of ``slots`` [n] a visual token in every head, of frame ``frames`` [n]."""
        n = int(slots.numel())
        return cls(
            slots,
            torch.ones(heads, n, dtype=torch.bool),
            torch.zeros(heads, n, dtype=torch.bool),
            frames[None].expand(heads, n),
            order.float()[None].expand(heads, n),
            torch.ones(heads, n),
            torch.zeros(heads, n),
        )

    @classmethod
    def of_map(cls, slots: LayerSlots) -> LayerView:
        """The visual entries a :class:`LayerSlots` map records."""
        visual = slots.kind != TEXT
        columns = visual.any(dim=0).nonzero().flatten()
        pick = lambda t: t[:, columns]  # noqa: E731
        kind = pick(slots.kind)
        return cls(
            columns,
            kind == TOKEN,
            kind == RECYCLED,
            pick(slots.frame).long(),
            pick(slots.order),
            pick(slots.count),
            pick(slots.weight),
        )


@dataclass
class PruneContext:
    """Everything a method sees when it compresses one session's cache.

    One-shot (the whole video prefilled, then pruned): every layer's view is the video's visual
    tokens, ``layout`` is the prompt's. Progressive (a chunked prefill, appended media): each
    step's views come from the session's slot map, and the statistics are the step's own (this
    chunk's query rows, and the window fed and rolled back after it)."""

    layout: TokenLayout
    #: Statistics recorded in the prefill, and in the window forward (the same object when aware).
    prefill: Recording
    window: Recording
    num_layers: int
    num_heads: int
    num_kv_heads: int
    question_aware: bool
    #: Per layer: the visual entries (``None``: every layer sees the video's tokens of ``layout``).
    views: list[LayerView] | None = None
    #: Frame spans seen so far (progressive: the session's; one-shot: the video's).
    frames_seen: int = 0
    #: Visual tokens seen so far (the budget's base: ``slots = budget · visual_seen``).
    visual_seen: int = 0
    #: Keep this many times the budget's entries (an intermediate step of a progressive prune).
    slack: float = 1.0
    #: The visual tokens the budget is a fraction of (0: ``visual_seen``). An intermediate step of
    #: a progressive prune uses the whole prefill's: its final budget applies from the first chunk,
    #: so nothing is evicted before the cache holds that many entries.
    budget_tokens: int = 0
    #: Token index of every visual token of ``layout`` [n_visual], and its frame span [n_visual].
    visual: torch.Tensor = field(init=False)
    frame_of: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        spans = self.layout.frame_spans
        self.visual = torch.cat([torch.arange(s, e) for s, e in spans])
        self.frame_of = torch.cat([torch.full((e - s,), i, dtype=torch.long) for i, (s, e) in enumerate(spans)])
        if self.views is None:
            one = LayerView.of_tokens(self.visual, self.frame_of, self.visual, self.num_kv_heads)
            self.views = [one] * self.num_layers
            self.frames_seen = self.frames_seen or len(spans)
            self.visual_seen = self.visual_seen or int(self.visual.numel())

    @property
    def num_frames(self) -> int:
        return self.frames_seen

    def view(self, layer: int) -> LayerView:
        return self.views[layer]

    def stats(self, layer: int, name: str) -> GroupStats:
        for record in (self.window, self.prefill):
            if layer in record.stats and name in record.stats[layer]:
                return record.stats[layer][name]
        raise KeyError(f"no {name!r} statistics recorded for layer {layer}")

    def visual_columns(self, per_head: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """[H, S] → [H, n]: the columns of ``layer``'s visual entries."""
        return per_head[:, self.views[layer].slots.to(per_head.device)]

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
    """Base class: ``name`` is the stable wire name, ``params`` its tunable parameters.

    ``budget`` is the fraction of visual tokens kept; ``max_visual`` (0: none) an absolute cap on
    the visual entries each layer keeps, whatever the video's length. ``progressive``: the method
    can compress a cache step by step (after each chunk of a chunked prefill, and when media is
    appended to a session), its scores being defined at chunk boundaries (docs/pruning.md says how
    for each); a one-shot method is run once on the whole prefill."""

    name: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[tuple[MethodParam, ...]] = ()
    progressive: ClassVar[bool] = False

    def __init__(self, budget: float, max_visual: int = 0, **values: float):
        self.budget = budget
        self.max_visual = max_visual
        self.values = values

    def __getattr__(self, item: str) -> float:
        values = self.__dict__.get("values", {})
        if item in values:
            return values[item]
        raise AttributeError(item)

    @property
    def compresses(self) -> bool:
        """Whether the method removes anything (a budget below 1 or a cap)."""
        return self.budget < 1.0 or self.max_visual > 0

    def slots_for(self, visual_seen: int, slack: float = 1.0) -> int:
        """Visual entries a layer keeps once ``visual_seen`` visual tokens have been seen (times
        ``slack`` between the chunks of a progressive prune, never more than were seen)."""
        slots = max(1, round(self.budget * visual_seen))
        slots = min(slots, self.max_visual) if self.max_visual else slots
        return slots if slack == 1.0 else min(visual_seen, math.ceil(slots * slack))

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
    """Score visual tokens per layer; the base selects, recycles and gathers.

    One implementation serves the one-shot prune and every step of a progressive one: per layer
    the eligible tokens compete for the slots, the evicted ones and the earlier recycled entries
    fold into new recycled entries, and the layer is rebuilt as its surviving entries in their
    order with the recycled entries right after the last visual one (one-shot: text before the
    video, kept tokens, recycled entries, text after; progressive: a cache that only grew at its
    end keeps its older survivors first, which is what a stored delta record needs)."""

    params = SHARED_PARAMS
    progressive = True

    @abstractmethod
    def score(self, layer: int, ctx: PruneContext) -> torch.Tensor:
        """Scores of ``layer``'s visual entries, [1, n] (shared selection) or [H_kv, n]."""

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
        """Boolean [rows, n]: each row's ``keep[row]`` best tokens."""
        mask = torch.zeros_like(scores, dtype=torch.bool)
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        for row in range(scores.shape[0]):
            mask[row, order[row, : int(keep[row])]] = True
        return mask

    def post_select(self, layer: int, keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor, ctx: PruneContext):
        """Hook between selection and gather (e.g. merging evicted tokens into kept ones).

        ``keys``/``values`` [H_kv, n, D] are ``layer``'s visual entries, ``kept`` [H_kv, n]."""
        return keys, values

    def apply(self, state: ConversationState, ctx: PruneContext) -> PruneResult:
        heads = ctx.num_kv_heads
        slots = self.slots_for(ctx.budget_tokens or ctx.visual_seen, ctx.slack)
        num_layers = len(state.cache.layers)
        maps = state.slots.layers if state.slots is not None else [None] * num_layers
        lengths, kept_per_frame, recycled_total, visual_total = [], torch.zeros(ctx.num_frames), 0, 0
        new_maps: list[LayerSlots] = []
        for layer_idx, layer in enumerate(state.cache.layers):
            view = ctx.view(layer_idx)
            layer_map = maps[layer_idx]
            length = int(layer.keys.shape[2])
            layer_slots = min(ctx.visual_seen, self.layer_slots(layer_idx, slots, ctx))
            if layer_slots >= view.entries:  # nothing to evict in this layer
                lengths.append(length)
                visual_total += view.entries
                recycled_total += int(view.recycled.sum(dim=1).max()) if view.size else 0
                tokens = view.frames[view.eligible]
                kept_per_frame += torch.bincount(tokens, minlength=ctx.num_frames)[: ctx.num_frames]
                new_maps.append(layer_map if layer_map is not None else _map_of(view, heads, length))
                continue
            outcome = self._compress_layer(layer_idx, layer, view, layer_slots, ctx)
            lengths.append(int(layer.keys.shape[2]))
            visual_total += outcome.visual
            recycled_total += outcome.recycled
            kept_per_frame += outcome.kept_per_frame
            old_map = layer_map if layer_map is not None else _map_of(view, heads, length)
            new_maps.append(outcome.rebuild_map(old_map))
            if outcome.bias is not None:
                state.attention_bias[layer_idx] = outcome.bias
            else:
                state.attention_bias.pop(layer_idx, None)
        state.slots = VisualSlots(new_maps)
        layers = max(1, len(lengths))
        return PruneResult(
            visual_kept=math.ceil(visual_total / layers),
            recycled=math.ceil(recycled_total / layers),
            layer_lengths=lengths,
            kept_per_frame=[int(x) for x in kept_per_frame],
        )

    def _compress_layer(self, layer_idx, layer, view: LayerView, layer_slots: int, ctx: PruneContext) -> _Outcome:
        """Select, fold and gather one layer (see the class docstring)."""
        from videoqa.worker.pruning.bin import fold

        heads, n = ctx.num_kv_heads, view.size
        scores = self.score(layer_idx, ctx).float().cpu()
        eligible_rows = view.eligible[:1] if scores.shape[0] == 1 else view.eligible
        tokens_per_row = eligible_rows.sum(dim=1)
        keep = torch.minimum(self.keep_counts(scores, layer_slots, ctx), tokens_per_row)
        ranked = scores.masked_fill(~eligible_rows, float("-inf")) if not bool(eligible_rows.all()) else scores
        kept = self.select(ranked, keep) & eligible_rows  # [rows, n]
        short = keep - kept.sum(dim=1)
        if bool((short > 0).any()):  # a method's own selection chose entries that cannot stay
            for row in (short > 0).nonzero().flatten().tolist():
                rest = ranked[row].masked_fill(kept[row] | ~eligible_rows[row], float("-inf"))
                kept[row, torch.argsort(rest, descending=True, stable=True)[: int(short[row])]] = True
        kept = kept.expand(heads, n) if kept.shape[0] == 1 else kept
        keep = keep.expand(heads) if keep.shape[0] == 1 else keep
        row_scores = scores.expand(heads, n) if scores.shape[0] == 1 else scores
        device = layer.keys.device
        slots_on_device = view.slots.to(device)
        vk = layer.keys[0][:, slots_on_device]  # [H_kv, n, D]
        vv = layer.values[0][:, slots_on_device]
        vk, vv = self.post_select(layer_idx, vk, vv, kept.to(device), ctx)
        total = self.total_slots(keep, layer_slots, view.entries, ctx)
        bins = [total - int(k) for k in keep]
        members = (view.eligible & ~kept) | view.recycled  # what folds (or leaves, without a bin)
        token_weights = row_scores if int(self.bin_weighting) == 0 else torch.ones_like(row_scores)
        # earlier recycled entries carry their weight sums (uniform weighting: their token counts)
        carried = view.weights if int(self.bin_weighting) == 0 else view.counts
        weights = torch.where(view.recycled, carried, token_weights)
        folded = fold(vk, vv, members, view.frames, view.order, weights, view.counts, bins) if any(bins) else None
        return _gather(layer, view, kept, vk, vv, folded, bins, keep, ctx, bias=bool(int(self.mass_bias)))


@dataclass
class _Outcome:
    """What compressing one layer did: the survivors (per head, old slot indices, in order), where
    the recycled entries went, and the counts the result reports."""

    survivors: list[torch.Tensor]
    insert_at: list[int]
    folded: list | None
    visual: int
    recycled: int
    kept_per_frame: torch.Tensor
    bias: torch.Tensor | None

    def rebuild_map(self, old: LayerSlots) -> LayerSlots:
        """The layer's slot map after the rebuild (``old``: the map before it)."""
        rows = []
        for h, survivors in enumerate(self.survivors):
            cut = self.insert_at[h]
            parts = [t[h, survivors] for t in old.tensors()]
            f = self.folded[h] if self.folded is not None else None
            if f is not None and f.counts.numel():
                b = f.counts.numel()
                inserted = (
                    torch.full((b,), RECYCLED, dtype=torch.int8),
                    f.frames.to(torch.int32),
                    f.order.float().cpu(),
                    f.counts.float().cpu(),
                    f.weights.float().cpu(),
                    torch.full((b,), -1, dtype=torch.int32),
                )
                parts = [torch.cat([p[:cut], new, p[cut:]]) for p, new in zip(parts, inserted, strict=True)]
            rows.append(parts)
        return LayerSlots(*(torch.stack([row[i] for row in rows]) for i in range(len(LayerSlots.names()))))


def _map_of(view: LayerView, heads: int, length: int) -> LayerSlots:
    """A slot map for a cache of ``length`` entries whose visual entries are ``view``'s (one-shot:
    the prefill's tokens; everything else text at its own index)."""
    base = LayerSlots.text(heads, length)
    columns = view.slots
    base.kind[:, columns] = torch.where(
        view.eligible, torch.tensor(TOKEN, dtype=torch.int8), torch.tensor(TEXT, dtype=torch.int8)
    )
    base.kind[:, columns] = torch.where(view.recycled, torch.tensor(RECYCLED, dtype=torch.int8), base.kind[:, columns])
    base.frame[:, columns] = view.frames.to(torch.int32)
    base.order[:, columns] = view.order.float()
    base.count[:, columns] = view.counts.float()
    base.weight[:, columns] = view.weights.float()
    return base


def _gather(layer, view: LayerView, kept, vk, vv, folded, bins, keep, ctx: PruneContext, bias: bool) -> _Outcome:
    """Rebuild ``layer`` in place: per head, its survivors in order with the recycled entries right
    after the last visual entry; the visual slots take ``vk``/``vv`` (a method may have merged
    evicted tokens into kept ones)."""
    heads = ctx.num_kv_heads
    keys, values = layer.keys[0], layer.values[0]
    device = keys.device
    length = int(keys.shape[1])
    position = torch.full((length,), -1, dtype=torch.long)
    position[view.slots] = torch.arange(view.size)  # column in the view of each visual slot
    last_visual = int(view.slots.max())
    removed = (view.eligible & ~kept) | view.recycled  # [H_kv, n]
    rows_k, rows_v, survivors_all, inserts = [], [], [], []
    kept_frames = torch.zeros(ctx.num_frames)
    bias_rows = []
    for h in range(heads):
        gone = torch.zeros(length, dtype=torch.bool)
        gone[view.slots[removed[h]]] = True
        survivors = (~gone).nonzero().flatten()
        cut = int((survivors <= last_visual).sum())
        columns = position[survivors]
        is_visual = columns >= 0
        row_k = keys[h, survivors.to(device)]
        row_v = values[h, survivors.to(device)]
        if bool(is_visual.any()):  # the kept visual entries as the method left them
            where = is_visual.nonzero().flatten().to(device)
            row_k = row_k.index_copy(0, where, vk[h, columns[is_visual].to(device)])
            row_v = row_v.index_copy(0, where, vv[h, columns[is_visual].to(device)])
        entry_bias = None
        if folded is not None and bins[h]:
            f = folded[h]
            row_k = torch.cat([row_k[:cut], f.keys, row_k[cut:]])
            row_v = torch.cat([row_v[:cut], f.values, row_v[cut:]])
            entry_bias = torch.log(f.counts.clamp(min=1)).cpu()
        rows_k.append(row_k)
        rows_v.append(row_v)
        survivors_all.append(survivors)
        inserts.append(cut)
        bias_rows.append((cut, entry_bias))
        tokens = view.frames[h][kept[h]]
        kept_frames += torch.bincount(tokens, minlength=ctx.num_frames)[: ctx.num_frames]
    layer.keys = torch.stack(rows_k)[None].contiguous()
    layer.values = torch.stack(rows_v)[None].contiguous()
    total = int(keep[0]) + bins[0]
    recycled = sum(bins) / heads if folded is not None else 0
    layer_bias = None
    if bias and folded is not None and any(b is not None for _, b in bias_rows):
        width = max(cut + (b.numel() if b is not None else 0) for cut, b in bias_rows)
        layer_bias = torch.zeros(heads, width)
        for h, (cut, entry_bias) in enumerate(bias_rows):
            if entry_bias is not None:
                layer_bias[h, cut : cut + entry_bias.numel()] = entry_bias
    return _Outcome(survivors_all, inserts, folded, total, recycled, kept_frames, layer_bias)
