"""The attention function every language-model layer runs through: sdpa, plus what pruning needs.

Registered under :data:`ATTENTION` (with sdpa's mask function, so masks are built exactly as for
sdpa: with no mask function, transformers passes ``None`` and sdpa would slice the keys of a
multi-token chunk to its first ``q`` entries). While idle it is sdpa, bit for bit. It adds:

- **Recording** (prefill only): for requested groups of query rows it accumulates, per query head,
  the column sums of the causal softmax over all keys, and how many of the rows could see each
  key. Queries arrive post-RoPE and keys are the cache after this chunk's update, so no model
  specific re-projection is needed (M-RoPE included). Rows are processed in chunks so memory stays
  bounded for tens of thousands of tokens.
- **Per-layer masks**: when a layer's cache length differs from the mask built for layer 0 (per
  layer budgets), the causal mask is rebuilt for that layer.
- **Per-slot bias**: an additive logit bias on cache entries (``ln(count)`` for recycled entries
  carrying the mass of the tokens they replace), taken from :func:`attention_bias`.
- **Row masks** (batched decoding): a float mask per layer [B, H, 1, S] for one-token steps of
  several sessions whose caches were padded to one width, taken from :func:`row_masks`.
- **Decode observers** (one-token steps): a callback per layer that sees the step's post-RoPE
  query and the keys it attends to, with the mask, from :func:`decode_observers` (``hae``'s
  running scores).
- **Retained state** (``retentive_kv``): per layer, a linear-attention state of evicted tokens
  whose read-out is mixed into the softmax output through a gate, from :func:`retained_state`.
  A zero gate leaves the output untouched (bit for bit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

import torch

ATTENTION = "videoqa_sdpa"


@dataclass
class RowGroup:
    """Query rows whose attention is accumulated, by row index within the recorded forward."""

    name: str
    rows: torch.Tensor
    #: ``softmax``, or ``softmax1`` (n-softmax with n = 1: ``exp(z_i) / (1 + Σ exp(z_j))``).
    normalize: Literal["softmax", "softmax1"] = "softmax"
    #: Only these layers (``None``: all).
    layers: frozenset[int] | None = None
    #: Also accumulate Σp² per key (the variance of its attention over the rows).
    moments: bool = False
    #: Also accumulate Σp·log p per key (the entropy of its attention over the rows).
    entropy: bool = False


@dataclass
class GroupStats:
    """``colsum`` [H, S]: summed attention each key received from the group's rows, per query
    head; ``visible`` [S]: how many of the rows could see each key (causal count). With moments,
    ``colsq`` [H, S] = Σp²; with entropy, ``colplogp`` [H, S] = Σp·log p over the rows."""

    colsum: torch.Tensor
    visible: torch.Tensor
    rows: int
    colsq: torch.Tensor | None = None
    colplogp: torch.Tensor | None = None

    def plus(self, later: GroupStats) -> GroupStats:
        """These statistics and those of ``later`` rows (over as many keys or more) together."""

        def add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            if a is None or b is None:
                return None
            grown = b.clone()
            grown[..., : a.shape[-1]] += a
            return grown

        return GroupStats(
            add(self.colsum, later.colsum),
            add(self.visible, later.visible),
            self.rows + later.rows,
            add(self.colsq, later.colsq),
            add(self.colplogp, later.colplogp),
        )

    def padded(self, keys: int) -> GroupStats:
        """These statistics over ``keys`` keys: the keys after the ones seen are seen by no row."""

        def pad(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None or t.shape[-1] >= keys else torch.nn.functional.pad(t, (0, keys - t.shape[-1]))

        if self.colsum.shape[-1] >= keys:
            return self
        return GroupStats(pad(self.colsum), pad(self.visible), self.rows, pad(self.colsq), pad(self.colplogp))

    def mean(self) -> torch.Tensor:
        """Mean attention over the rows [H, S]."""
        return self.colsum / max(self.rows, 1)

    def causal_mean(self) -> torch.Tensor:
        """Column sums divided by the number of rows that could see the key [H, S]."""
        return self.colsum / self.visible.clamp(min=1)

    def causal_variance(self) -> torch.Tensor:
        """Variance of each key's attention over the rows that could see it [H, S] (needs moments)."""
        seen = self.visible.clamp(min=1)
        return (self.colsq / seen - (self.colsum / seen) ** 2).clamp(min=0)

    def column_entropy(self) -> torch.Tensor:
        """Entropy of each key's attention spread over the rows that saw it, normalised to [0, 1]
        by log(rows that could see it) [H, S] (needs entropy): 1 = attended evenly by every row,
        0 = by one row only. ``H = log c − Σ p·log p / c`` for the column sum ``c``."""
        total = self.colsum.clamp(min=1e-30)
        entropy = torch.log(total) - self.colplogp / total
        return (entropy / torch.log(self.visible.clamp(min=2).float())).clamp(0, 1)


@dataclass
class Recording:
    """Statistics gathered during the forwards of one sequence: ``stats[layer][group name]``.

    A sequence may be run in several forwards (chunked prefill): group rows index the whole
    sequence, ``offset`` is where the forward being run starts in it, and statistics of later
    forwards add to those of earlier ones (over the keys the cache holds then: columns of keys
    that arrived later are zero for earlier rows, as causality has it)."""

    groups: list[RowGroup]
    #: Keep statistics only for the first ``key_limit`` keys (drops a probe's own keys).
    key_limit: int | None = None
    #: Index in the sequence of the first query row of the forward being recorded.
    offset: int = 0
    #: Upper bound on the fp32 logits materialised at once, in bytes.
    chunk_bytes: int = 64 << 20
    stats: dict[int, dict[str, GroupStats]] = field(default_factory=dict)
    #: Wall time spent computing statistics (what recording adds to a forward pass).
    seconds: float = 0.0

    def cover(self, keys: list[int]) -> None:
        """After a sequence ran in several forwards: statistics over the keys each layer holds
        (``keys[layer]``, capped at ``key_limit``), as one forward over it would have them (a
        group whose rows all came in an earlier forward never saw the later keys)."""
        for layer, groups in self.stats.items():
            limit = keys[layer] if self.key_limit is None else min(self.key_limit, keys[layer])
            for name, stats in groups.items():
                groups[name] = stats.padded(limit)

    def observe(self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        """``query`` [1, H, q, D] (post-RoPE), ``key`` [1, H_kv, S, D] (the cache after update)."""
        groups = [g for g in self.groups if g.layers is None or layer in g.layers]
        if not groups:
            return
        _synchronize(query.device)
        started = time.perf_counter()
        self._observe(layer, groups, query, key, scaling)
        _synchronize(query.device)
        self.seconds += time.perf_counter() - started

    def _observe(self, layer: int, groups: list[RowGroup], query, key, scaling: float) -> None:
        heads, q_len, seq = query.shape[1], query.shape[2], key.shape[2]
        keys = key[0].float().repeat_interleave(heads // key.shape[1], dim=0)  # [H, S, D]
        limit = seq if self.key_limit is None else min(self.key_limit, seq)
        per_chunk = max(1, self.chunk_bytes // (heads * seq * 4))
        key_pos = torch.arange(seq, device=key.device)
        out = self.stats.setdefault(layer, {})
        for group in groups:
            rows = group.rows.to(query.device) - self.offset
            rows = rows[(rows >= 0) & (rows < q_len)]  # this forward's rows of the group
            if rows.numel() == 0:
                continue
            colsum = torch.zeros(heads, seq, device=query.device)
            colsq = torch.zeros(heads, seq, device=query.device) if group.moments else None
            colplogp = torch.zeros(heads, seq, device=query.device) if group.entropy else None
            visible = torch.zeros(seq, dtype=torch.long, device=query.device)
            for start in range(0, rows.numel(), per_chunk):
                chunk = rows[start : start + per_chunk]
                logits = torch.einsum("hqd,hsd->hqs", query[0, :, chunk].float() * scaling, keys)
                # Row r of the chunk sits at key position seq - q_len + r and sees keys up to it;
                # only columns after the chunk's first row can be hidden from some of its rows.
                horizon = seq - q_len + chunk  # [c]
                first = int(horizon.min()) + 1
                if first < seq:
                    hidden = key_pos[None, first:] > horizon[:, None]  # [c, S - first]
                    logits[:, :, first:].masked_fill_(hidden[None], float("-inf"))
                probabilities = _normalize(logits, group.normalize)
                colsum += probabilities.sum(dim=1)
                if group.moments:
                    colsq += (probabilities**2).sum(dim=1)
                if group.entropy:
                    colplogp += torch.special.xlogy(probabilities, probabilities).sum(dim=1)
                # Rows that see key j are those with horizon >= j: a suffix sum of the horizon histogram.
                visible += torch.bincount(horizon.clamp(max=seq - 1), minlength=seq).flip(0).cumsum(0).flip(0)
            extra = [None if t is None else t[:, :limit] for t in (colsq, colplogp)]
            stats = GroupStats(colsum[:, :limit], visible[:limit], int(rows.numel()), *extra)
            out[group.name] = stats if group.name not in out else out[group.name].plus(stats)


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that the timing is the statistics' own (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _normalize(logits: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "softmax":
        return torch.softmax(logits, dim=-1)
    top = logits.amax(dim=-1, keepdim=True).clamp(min=0)  # n-softmax: the extra 1 is exp(0)
    exp = torch.exp(logits - top)
    return exp / (torch.exp(-top) + exp.sum(dim=-1, keepdim=True))


#: ``observer(query [B, H, q, D] post-RoPE, key [B, H_kv, S, D], mask [B|1, H|1, q, S] (float or
#: bool) or None, scaling)``: called for every forward of the layer it is registered for after the
#: prefill: one-token decode steps (q = 1) and fed questions (q > 1, causal within the chunk). A
#: batched step passes the row's whole stack and mask with ``columns=``: its entries, in order.
DecodeObserver = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", float], None]


@dataclass
class RetainedLayer:
    """One layer's linear-attention memory of evicted tokens, per row and KV head:
    ``state`` [B, H_kv, D, D] = Σ β φ(k) vᵀ, ``normalizer`` [B, H_kv, D] = Σ β φ(k), and ``gate``
    [B, H_kv] in [0, 1], the weight of the memory's read-out against the softmax output."""

    state: torch.Tensor
    normalizer: torch.Tensor
    gate: torch.Tensor


@dataclass(frozen=True)
class ForwardHooks:
    """Everything the attention function adds to sdpa for the forwards run inside :func:`hooks`
    (one typed object in one context variable; every field ``None`` is plain sdpa).

    - ``recording``: attention statistics to accumulate (prefill and window forwards);
    - ``bias``: per layer, an additive logit bias [H_kv, n] on the first n cache entries;
    - ``row_masks``: per layer, the float mask [B, H, 1, S] of a batched one-token step;
    - ``observers``: per layer, a :data:`DecodeObserver`;
    - ``retained``: per layer, a :class:`RetainedLayer` mixed into the output.
    """

    recording: Recording | None = None
    bias: dict[int, torch.Tensor] | None = None
    row_masks: dict[int, torch.Tensor] | None = None
    observers: dict[int, DecodeObserver] | None = None
    retained: dict[int, RetainedLayer] | None = None


_NO_HOOKS = ForwardHooks()
_hooks: ContextVar[ForwardHooks] = ContextVar("videoqa_forward_hooks", default=_NO_HOOKS)


@contextlib.contextmanager
def hooks(**fields) -> Iterator[ForwardHooks]:
    """Run the block with the current hooks plus ``fields`` (names of :class:`ForwardHooks`;
    empty dicts count as ``None``), and the previous hooks after it."""
    current = _hooks.get()
    updated = dataclasses.replace(current, **{name: value or None for name, value in fields.items()})
    token = _hooks.set(updated)
    try:
        yield updated
    finally:
        _hooks.reset(token)


def recording(record: Recording) -> contextlib.AbstractContextManager:
    """Record attention statistics of the forward passes run inside the block."""
    return hooks(recording=record)


def attention_bias(bias: dict[int, torch.Tensor] | None) -> contextlib.AbstractContextManager:
    """Apply per-layer additive biases [H_kv, n] to the first n cache entries inside the block."""
    return hooks(bias=bias)


def row_masks(masks: dict[int, torch.Tensor]) -> contextlib.AbstractContextManager:
    """Use ``masks[layer]`` (float [B, H, 1, S]: 0 where a row may look, -inf on padding, plus
    per-slot biases) as the attention mask of one-token steps inside the block."""
    return hooks(row_masks=masks)


def decode_observers(observers: dict[int, DecodeObserver]) -> contextlib.AbstractContextManager:
    """Call ``observers[layer]`` on every forward of that layer inside the block."""
    return hooks(observers=observers)


def retained_state(layers: dict[int, RetainedLayer]) -> contextlib.AbstractContextManager:
    """Mix each layer's retained memory into its attention output inside the block."""
    return hooks(retained=layers)


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1: the positive feature map of linear attention."""
    return torch.nn.functional.elu(x.float()) + 1


def _mix_retained(out: torch.Tensor, query: torch.Tensor, memory: RetainedLayer) -> torch.Tensor:
    """``(1 − g)·out + g·φ(q)ᵀS / φ(q)ᵀz`` per row and head; ``out`` [B, q, H, D] (sdpa's layout),
    ``query`` [B, H, q, D]. Heads share their KV group's memory."""
    heads, kv_heads = query.shape[1], memory.state.shape[1]
    group = heads // kv_heads
    phi = feature_map(query)  # [B, H, q, D]
    state = memory.state.float().repeat_interleave(group, dim=1)  # [B, H, D, D]
    normalizer = memory.normalizer.float().repeat_interleave(group, dim=1)  # [B, H, D]
    numerator = phi @ state  # [B, H, q, D]
    denominator = (phi * normalizer[:, :, None, :]).sum(-1, keepdim=True)  # [B, H, q, 1]
    readout = (numerator / denominator.clamp(min=1e-6)).transpose(1, 2)  # [B, q, H, D]
    gate = memory.gate.float().repeat_interleave(group, dim=1)[:, None, :, None]  # [B, 1, H, 1]
    return ((1 - gate) * out.float() + gate * readout).to(out.dtype)


def _fit_mask(mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
    """The layer's causal mask when its cache length differs from the one the mask was built for."""
    q_len, seq = query.shape[2], key.shape[2]
    if mask is not None and mask.shape[-1] == seq:
        return mask
    if q_len == 1 or (mask is None and q_len == seq):
        return None  # one query sees every entry / sdpa's own causal path (a plain prefill)
    return torch.ones(q_len, seq, dtype=torch.bool, device=query.device).tril(seq - q_len)[None, None]


def _with_bias(mask: torch.Tensor | None, bias: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """A float mask [1, H, q, S]: the causal mask plus ``bias`` [H_kv, n] on the first n entries."""
    heads, q_len, seq = query.shape[1], query.shape[2], key.shape[2]
    full = torch.zeros(bias.shape[0], seq, dtype=query.dtype, device=query.device)
    n = min(bias.shape[1], seq)
    full[:, :n] = bias[:, :n].to(query.dtype)
    full = full.repeat_interleave(heads // bias.shape[0], dim=0)[None, :, None, :].expand(1, heads, q_len, seq)
    if mask is None:
        if q_len == 1:
            return full.contiguous()
        mask = torch.ones(q_len, seq, dtype=torch.bool, device=query.device).tril(seq - q_len)[None, None]
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(~mask, float("-inf"))
    return (mask + full).contiguous()


def attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa with recording, per-layer masks and per-slot bias (see the module docstring)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not getattr(module, "is_causal", False):  # vision tower: untouched
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    layer = getattr(module, "videoqa_layer", getattr(module, "layer_idx", None))  # the KV layer's index
    active = _hooks.get()
    record = active.recording
    if record is not None and layer is not None and query.shape[2] > 1:
        scaling = kwargs.get("scaling") or getattr(module, "scaling", query.shape[-1] ** -0.5)
        record.observe(layer, query, key, scaling)
    masks = active.row_masks
    if masks is not None and layer in masks and query.shape[2] == 1:
        mask = masks[layer].to(query.dtype)
    else:
        mask = _fit_mask(attention_mask, query, key)
        biases = active.bias
        if biases is not None and layer in biases:
            mask = _with_bias(mask, biases[layer], query, key)
    observers = active.observers
    if observers is not None and layer in observers:
        scaling = kwargs.get("scaling") or getattr(module, "scaling", query.shape[-1] ** -0.5)
        observers[layer](query, key, mask, scaling)
    out, weights = sdpa_attention_forward(module, query, key, value, mask, **kwargs)
    memories = active.retained
    if memories is not None and layer in memories:
        out = _mix_retained(out, query, memories[layer])
    return out, weights


_installed = False


def install(model) -> None:
    """Route the model's language-model attention through :func:`attention` (vision stays sdpa)."""
    global _installed
    if not _installed:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION, attention)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)
        _installed = True
    model.set_attn_implementation({"text_config": ATTENTION, "vision_config": "sdpa"})
    from videoqa.worker.model.recurrent import number_attention_layers

    number_attention_layers(model)
