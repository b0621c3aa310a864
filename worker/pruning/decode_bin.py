"""``hae``'s Dynamic Decoding Eviction Strategy: a bounded recycle bin that cache entries move to,
and back from, while an answer is decoded.

A reconstruction (HAE, arXiv 2602.02197, publishes no code; see docs/pruning.md). Every decoded
token's query, at the one layer ``hae`` scores with, is compared with the active cache *and* with
the entries in the bin (their keys are kept, so their would-be attention is known):

    r_j = p_j · (S + n)     (p: head-averaged softmax over the S cache and n bin entries; r = 1 is uniform)
    score_j ← decay · score_j + (1 − decay) · r_j

Every ``interval`` decoded tokens the bin is rebalanced: bin entries whose score rose above
``restore_above`` return to the cache (appended: keys carry their rotary position, so order does
not matter), then visual cache entries whose score fell below ``evict_below`` move to the bin (at
most down to ``min_visual`` of the visual entries the prefill kept). A new question (a follow-up
turn) re-scores the bin's entries by its own attention; those above ``restore_above`` return and
the question is read again with them, so a later turn is not answered without the entries an
earlier answer did not need. Entries move in every layer
at once, as the prefill's kept set does (index broadcasting). A full bin drops its lowest-scoring
(``purge=0``) or oldest (``purge=1``) entries: those are gone for good. The bin lives off the
active cache, on the CPU, and is stored with the session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from videoqa.worker.errors import CorruptSession
from videoqa.worker.pruning.extension import CacheExtension, extension_kind

if TYPE_CHECKING:
    from videoqa.worker.model.state import ConversationState

#: Running score given to entries the bin has not seen yet (new text, answers): uniform attention.
UNSEEN = 1.0


@dataclass(frozen=True)
class BinPolicy:
    """``hae``'s decoding parameters (see the module docstring)."""

    layer: int
    interval: int
    evict_below: float
    restore_above: float
    decay: float
    capacity: int
    purge: int
    min_visual: int


@extension_kind
class DecodeRecycleBin(CacheExtension):
    """The bin and the running scores of one session (see the module docstring).

    ``scores`` [S] and ``visual`` [S] follow the active cache's entries (every layer has the same
    entries); the bin holds ``keys``/``values`` per layer [H_kv, n, D] on the CPU, with ``bin_scores``
    [n] and ``bin_since`` [n] (the decoded-token count when each entry was binned)."""

    kind = "decode_recycle_bin"
    mutable = True
    rewrites_cache = True

    def __init__(self, policy: BinPolicy, visual: torch.Tensor, num_layers: int):
        self.policy = policy
        self.visual = visual.bool().cpu()
        self.scores = torch.full((visual.numel(),), UNSEEN)
        self.keys: list[torch.Tensor] = [torch.empty(0) for _ in range(num_layers)]
        self.values: list[torch.Tensor] = [torch.empty(0) for _ in range(num_layers)]
        self.bin_scores = torch.empty(0)
        self.bin_since = torch.empty(0, dtype=torch.long)
        self.steps = 0
        self._rewritten = False
        #: Evictions, restorations and purges so far (diagnostics and tests).
        self.moves = {"evicted": 0, "restored": 0, "purged": 0}

    # --- what decoding calls ------------------------------------------------------------------

    @property
    def size(self) -> int:
        return int(self.bin_scores.numel())

    def observers(self):
        return {self.policy.layer: self.observe}

    def observe(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float,
        columns: torch.Tensor | None = None,
    ) -> None:
        """The scoring layer's attention, one forward after the prefill: ``query`` [1, H, q, D]
        (post-RoPE), ``key`` [1, H_kv, S, D] (the active cache, these q tokens included), ``mask``
        [1, H|1, q, S] (float or bool) or None; ``columns`` [S'] (a batched step): which of the S
        keys are this session's entries, in its cache order (the others are masked out). A decoded
        token (q = 1) updates every running score; a question (q > 1) re-scores the bin's entries
        by its attention, so that :meth:`reread` can hand back the ones it looks at."""
        heads, rows, width = query.shape[1], query.shape[2], key.shape[2]
        length = width if columns is None else columns.numel()
        self._follow(length)
        kv_heads, dim = key.shape[1], key.shape[3]
        # Query heads grouped by their KV head, so no key is copied per query head: [H_kv, G·q, D].
        q = (query[0].float() * scaling).reshape(kv_heads, -1, dim)
        logits = (q @ key[0].float().transpose(1, 2)).reshape(heads, rows, width)  # [H, q, S]
        if mask is None and rows > 1:
            mask = torch.ones(rows, width, dtype=torch.bool, device=q.device).tril(width - rows)[None, None]
        if mask is not None and mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask[0], float("-inf"))
        elif mask is not None:
            logits = logits + mask[0].float()
        if self.size:
            binned = self.keys[self.policy.layer].to(query.device).float()  # [H_kv, n, D]
            logits = torch.cat([logits, (q @ binned.transpose(1, 2)).reshape(heads, rows, -1)], dim=2)  # [H, q, S+n]
        visible = torch.isfinite(logits).sum(-1, keepdim=True)  # [H, q, 1]: uniform attention = 1 / visible
        relative = (torch.softmax(logits, dim=-1) * visible).mean(dim=(0, 1))  # [S + n]
        cache = relative[:width] if columns is None else relative[columns]
        cache, binned = cache.cpu(), relative[width:].cpu()
        if rows > 1:
            self.bin_scores = binned
            return
        decay = self.policy.decay
        self.scores = decay * self.scores + (1 - decay) * cache
        self.bin_scores = decay * self.bin_scores + (1 - decay) * binned

    def reread(self, state: ConversationState, count: int) -> bool:
        """After a question was read: if it looked at binned entries (score above
        ``restore_above``), take its ``count`` entries out of every layer and return those entries
        to the cache, so that the question is read again with them (see the base class)."""
        back = (self.bin_scores > self.policy.restore_above).nonzero().flatten()
        if not back.numel():
            return False
        layers = state.cache.layers
        for layer in layers:
            layer.keys = layer.keys[:, :, :-count].contiguous()
            layer.values = layer.values[:, :, :-count].contiguous()
        self.scores, self.visual = self.scores[:-count], self.visual[:-count]
        self._restore(layers, back)
        return True

    def after_token(self, state: ConversationState) -> None:
        self.steps += 1
        if self.policy.interval and self.steps % self.policy.interval == 0:
            self.rebalance(state)

    def counts(self) -> tuple[int, int]:
        return int(self.visual.sum()), self.size

    @property
    def rewritten(self) -> bool:
        return self._rewritten

    def mark_saved(self) -> None:
        self._rewritten = False

    def _follow(self, length: int) -> None:
        """Entries appended since the last look (text, answers) are never evicted."""
        grown = length - self.scores.numel()
        if grown > 0:
            self.scores = torch.cat([self.scores, torch.full((grown,), UNSEEN)])
            self.visual = torch.cat([self.visual, torch.zeros(grown, dtype=torch.bool)])

    # --- moving entries -----------------------------------------------------------------------

    def rebalance(self, state: ConversationState) -> None:
        """Restore recovered bin entries, evict fading visual ones, purge an overfull bin."""
        layers = state.cache.layers  # takes the session back from a batch
        self._follow(int(layers[0].keys.shape[2]))
        back = (self.bin_scores > self.policy.restore_above).nonzero().flatten()
        if back.numel():
            self._restore(layers, back)
        floor = self.policy.min_visual
        room = int(self.visual.sum()) - floor
        fading = ((self.scores < self.policy.evict_below) & self.visual).nonzero().flatten()
        if room > 0 and fading.numel():
            fading = fading[torch.argsort(self.scores[fading], stable=True)][:room]
            self._evict(layers, fading.sort().values)
        if self.size > self.policy.capacity:
            self._purge(self.size - self.policy.capacity)

    def _evict(self, layers, entries: torch.Tensor) -> None:
        stay = torch.ones(self.scores.numel(), dtype=torch.bool)
        stay[entries] = False
        for i, layer in enumerate(layers):
            device = layer.keys.device
            where, keep = entries.to(device), stay.nonzero().flatten().to(device)
            moved_k, moved_v = layer.keys[0][:, where].cpu(), layer.values[0][:, where].cpu()
            self.keys[i] = moved_k if not self.size else torch.cat([self.keys[i], moved_k], dim=1)
            self.values[i] = moved_v if not self.size else torch.cat([self.values[i], moved_v], dim=1)
            layer.keys = layer.keys[:, :, keep].contiguous()
            layer.values = layer.values[:, :, keep].contiguous()
        self.bin_scores = torch.cat([self.bin_scores, self.scores[entries]])
        self.bin_since = torch.cat([self.bin_since, torch.full((entries.numel(),), self.steps, dtype=torch.long)])
        self.scores, self.visual = self.scores[stay], self.visual[stay]
        self.moves["evicted"] += int(entries.numel())
        self._rewritten = True

    def _restore(self, layers, entries: torch.Tensor) -> None:
        stay = torch.ones(self.size, dtype=torch.bool)
        stay[entries] = False
        for i, layer in enumerate(layers):
            device, dtype = layer.keys.device, layer.keys.dtype
            back_k = self.keys[i][:, entries].to(device=device, dtype=dtype)[None]
            back_v = self.values[i][:, entries].to(device=device, dtype=dtype)[None]
            layer.keys = torch.cat([layer.keys, back_k], dim=2)
            layer.values = torch.cat([layer.values, back_v], dim=2)
            self.keys[i], self.values[i] = self.keys[i][:, stay], self.values[i][:, stay]
        self.scores = torch.cat([self.scores, self.bin_scores[entries]])
        self.visual = torch.cat([self.visual, torch.ones(entries.numel(), dtype=torch.bool)])
        self.bin_scores, self.bin_since = self.bin_scores[stay], self.bin_since[stay]
        self.moves["restored"] += int(entries.numel())
        self._rewritten = True

    def _purge(self, count: int) -> None:
        order = self.bin_scores if self.policy.purge == 0 else self.bin_since.float()
        drop = torch.argsort(order, stable=True)[:count]
        stay = torch.ones(self.size, dtype=torch.bool)
        stay[drop] = False
        self.keys = [k[:, stay] for k in self.keys]
        self.values = [v[:, stay] for v in self.values]
        self.bin_scores, self.bin_since = self.bin_scores[stay], self.bin_since[stay]
        self.moves["purged"] += count
        self._rewritten = True

    # --- checkpoints and records --------------------------------------------------------------

    def checkpoint(self) -> Any:
        # Tensors here are replaced, never written in place: references are a snapshot.
        return (
            self.scores,
            self.visual,
            list(self.keys),
            list(self.values),
            self.bin_scores,
            self.bin_since,
            self.steps,
            self._rewritten,
            dict(self.moves),
        )

    def rollback(self, token: Any) -> None:
        (
            self.scores,
            self.visual,
            keys,
            values,
            self.bin_scores,
            self.bin_since,
            self.steps,
            self._rewritten,
            moves,
        ) = token
        self.keys, self.values, self.moves = list(keys), list(values), dict(moves)

    def to_record(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {"bin.scores": self.scores, "bin.visual": self.visual.to(torch.uint8)}
        tensors["bin.bin_scores"], tensors["bin.bin_since"] = self.bin_scores, self.bin_since
        if self.size:
            for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
                tensors[f"bin.k.{i}"], tensors[f"bin.v.{i}"] = k.contiguous(), v.contiguous()
        header = {
            "kind": self.kind,
            "policy": vars(self.policy),
            "layers": len(self.keys),
            "steps": self.steps,
            "moves": self.moves,
        }
        return header, tensors

    @classmethod
    def from_record(cls, header: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device):
        try:
            policy = BinPolicy(**header["policy"])
            restored = cls(policy, tensors["bin.visual"].bool(), int(header["layers"]))
            restored.scores = tensors["bin.scores"].float()
            restored.bin_scores = tensors["bin.bin_scores"].float()
            restored.bin_since = tensors["bin.bin_since"].long()
            if restored.size:
                restored.keys = [tensors[f"bin.k.{i}"] for i in range(int(header["layers"]))]
                restored.values = [tensors[f"bin.v.{i}"] for i in range(int(header["layers"]))]
            restored.steps, restored.moves = int(header["steps"]), dict(header["moves"])
        except (KeyError, TypeError) as missing:
            raise CorruptSession(f"stored recycle bin is incomplete ({missing})") from None
        if restored.scores.numel() != restored.visual.numel():
            raise CorruptSession("stored recycle bin does not match its cache")
        return restored
