"""A session's model state: its KV cache, positions, history, and what travels beside the cache.

- :class:`ConversationState`: the cache ([1, H_kv, S, D] per layer, S ≤ ``next_pos`` once
  pruned), the text index of the next token (``next_pos``) and ``rope_delta`` (positions are
  explicit in every forward after a prune), every token fed so far, the last sampled token not yet
  fed, per-layer recycled-entry biases, a :class:`CacheExtension` and a :class:`VisualSlots` map.
- :class:`Checkpoint`: where a session was, so that a cancelled or failed turn can be undone.
- :class:`CacheExtension`: state a pruning method keeps beside the cache (``hae``'s recycle bin,
  ``retentive_kv``'s memory); the generator, the batched decoder, checkpoints and session records
  handle it through this one interface. Implementations live in ``pruning/``.
- :class:`VisualSlots`: which cache entries are visual, of which frame, and how many tokens a
  recycled entry folds; what progressive compression (chunked prefill, appended media) needs to
  compress the visual entries of a cache it built earlier.

A hybrid model's session (Qwen3.5) also has :class:`~videoqa.worker.model.recurrent.LinearStates`:
its cache then holds the full-attention layers only, and every forward runs over
:attr:`ConversationState.model_cache`, both in the model's layer order.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers import DynamicCache

from videoqa.worker.model.attention import DecodeObserver, RetainedLayer, hooks
from videoqa.worker.model.recurrent import LinearSnapshot, LinearStates

if TYPE_CHECKING:
    from videoqa.worker.model.batch import DecodeBatch

#: Kinds of cache entries in :class:`VisualSlots`.
TEXT, TOKEN, RECYCLED = 0, 1, 2


class CacheExtension(ABC):
    """Per-session state beside the cache (see the module docstring). Defaults: no effect."""

    #: Stable name in session records.
    kind: ClassVar[str]
    #: Whether the state changes after the prefill (then every turn record carries it).
    mutable: ClassVar[bool] = False
    #: Whether it rewrites cache entries (not only appends): checkpoints then keep the tensors.
    rewrites_cache: ClassVar[bool] = False

    def memory(self, layer: int) -> RetainedLayer | None:
        """The layer's retained memory for this session (batch dimension 1), if any."""
        return None

    def observers(self) -> dict[int, DecodeObserver]:
        """Callbacks per layer that see every one-token step of this session."""
        return {}

    def after_token(self, state: ConversationState) -> None:  # noqa: B027  (optional hook)
        """Called after each decoded token has been fed (the cache holds it)."""

    def reread(self, state: ConversationState, count: int) -> bool:
        """Called after a multi-token input (a question opening a turn) of ``count`` tokens has been
        fed. True: the extension changed the cache for it and removed its ``count`` entries from
        every layer, and the caller feeds it again (the generator does)."""
        return False

    def counts(self) -> tuple[int, int] | None:
        """(visual entries in the active cache, entries held aside) when they differ from what
        the prefill left; ``None`` to report the prefill's counts."""
        return None

    def nbytes(self) -> int:
        """Bytes the extension keeps on the model's device (counted with the cache)."""
        return 0

    @property
    def rewritten(self) -> bool:
        """Whether cache entries were moved (not only appended) since the session was last stored:
        its next record must then hold the whole cache, not a delta."""
        return False

    def mark_saved(self) -> None:  # noqa: B027  (optional hook)
        """The session was just stored."""

    @abstractmethod
    def checkpoint(self) -> Any:
        """What :meth:`rollback` needs to undo everything after this point."""

    @abstractmethod
    def rollback(self, token: Any) -> None: ...

    @abstractmethod
    def to_record(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """A JSON-able header and named tensors (safetensors) that ``from_record`` reads."""

    @classmethod
    @abstractmethod
    def from_record(
        cls, header: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device
    ) -> CacheExtension: ...


@dataclass
class LayerSlots:
    """What each of a layer's first S cache entries is, per KV head (CPU tensors, [H_kv, S]).

    ``kind``: :data:`TEXT`, :data:`TOKEN` (a visual token) or :data:`RECYCLED` (an entry that
    folds evicted visual tokens); ``frame``: the frame span of a visual entry (-1 for text);
    ``order``: the entry's token index in the conversation (a recycled entry: the mass-weighted
    mean of its tokens'); ``count``: tokens the entry stands for (1 for a token); ``weight``: the
    merge weight it carries into a later fold (a token: 0, its score is given when it is folded);
    ``origin``: the entry's index in the cache as the session was last stored (-1: not stored
    yet), from which a stored delta says which stored entries a compression removed.
    """

    kind: torch.Tensor
    frame: torch.Tensor
    order: torch.Tensor
    count: torch.Tensor
    weight: torch.Tensor
    origin: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.kind.shape[1])

    def extended(self, length: int) -> LayerSlots:
        """The map of a cache that grew to ``length`` entries: the new ones are text."""
        extra = length - self.length
        if extra <= 0:
            return self
        heads = self.kind.shape[0]

        def grow(t: torch.Tensor, value: float) -> torch.Tensor:
            return torch.cat([t, torch.full((heads, extra), value, dtype=t.dtype)], dim=1)

        return LayerSlots(
            grow(self.kind, TEXT),
            grow(self.frame, -1),
            grow(self.order, -1),
            grow(self.count, 0),
            grow(self.weight, 0),
            grow(self.origin, -1),
        )

    def tail(self, start: int) -> LayerSlots:
        """The entries from ``start`` on."""
        return LayerSlots(*(t[:, start:] for t in self.tensors()))

    def gathered(self, index: torch.Tensor) -> LayerSlots:
        """Entries ``index`` [H_kv, S'] of each head, in that order."""
        return LayerSlots(*(torch.gather(t, 1, index) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.kind, self.frame, self.order, self.count, self.weight, self.origin

    def stored(self) -> LayerSlots:
        """This map once its cache has been stored: every entry's origin is its own index."""
        heads, length = self.kind.shape
        origin = torch.arange(length, dtype=torch.int32).expand(heads, length).clone()
        return LayerSlots(self.kind, self.frame, self.order, self.count, self.weight, origin)

    @classmethod
    def text(cls, heads: int, length: int) -> LayerSlots:
        return cls(
            torch.full((heads, length), TEXT, dtype=torch.int8),
            torch.full((heads, length), -1, dtype=torch.int32),
            torch.arange(length, dtype=torch.float32).expand(heads, length).clone(),
            torch.zeros(heads, length),
            torch.zeros(heads, length),
            torch.full((heads, length), -1, dtype=torch.int32),
        )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return "kind", "frame", "order", "count", "weight", "origin"


@dataclass
class VisualSlots:
    """:class:`LayerSlots` per layer; entries past a layer's map are text fed later."""

    layers: list[LayerSlots]

    def layer(self, index: int, length: int) -> LayerSlots:
        """Layer ``index``'s map, covering ``length`` entries."""
        return self.layers[index].extended(length)


@dataclass(frozen=True)
class Checkpoint:
    """Where a session was: enough to undo everything fed (and decoded) after it."""

    lengths: tuple[int, ...]
    next_pos: int
    rope_delta: int
    token_count: int
    pending_token: int | None
    #: The cache extension's own checkpoint (``None`` without one).
    extension: Any = None
    #: Each layer's (keys, values) when entries may be rewritten, not only appended (a cache
    #: extension that moves entries, or media appended with compression): truncating is not
    #: enough. Cached tensors are never written in place (every change makes new ones), so
    #: references do.
    tensors: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = field(default=None, compare=False)
    slots: VisualSlots | None = field(default=None, compare=False)
    bias: dict[int, torch.Tensor] = field(default_factory=dict, compare=False)
    #: Copies of the linear-attention states (hybrid models).
    linear: LinearSnapshot | None = field(default=None, compare=False)


class ConversationState:
    """A session's model state (see the module docstring).

    While a :class:`~videoqa.worker.model.batch.DecodeBatch` decodes this session with others,
    its K/V live in the batch's stack (the session is *lent*); :attr:`cache` takes them back
    first, and lengths and byte counts are answered from the batch's bookkeeping.
    """

    def __init__(
        self,
        cache: DynamicCache,
        next_pos: int,
        rope_delta: int,
        token_ids: list[int] | None = None,
        pending_token: int | None = None,
        attention_bias: dict[int, torch.Tensor] | None = None,
        extension: CacheExtension | None = None,
        slots: VisualSlots | None = None,
        linear: LinearStates | None = None,
    ):
        self._cache = cache
        self._linear = linear
        self.next_pos = next_pos
        self.rope_delta = rope_delta
        #: Every token fed so far, in order (the conversation's history).
        self.token_ids: list[int] = list(token_ids or [])
        #: The last sampled token of the previous answer, not yet fed.
        self.pending_token = pending_token
        #: Per-layer additive logit bias [H_kv, n] on the first n cache entries (recycled entries'
        #: ``ln(count)``); empty when the pruning method uses none.
        self.attention_bias: dict[int, torch.Tensor] = dict(attention_bias or {})
        #: State the pruning method keeps beside the cache, or ``None``.
        self.extension = extension
        #: What the visual entries are (sessions built by a progressive-capable method), or ``None``.
        self.slots = slots
        #: The batch holding this session's K/V while it decodes with others (``None``: not lent).
        self.lender: DecodeBatch | None = None

    @property
    def cache(self) -> DynamicCache:
        """The session's own cache (taken back from a batch first if it was lent)."""
        if self.lender is not None:
            self.lender.give_back(self)
        return self._cache

    @cache.setter
    def cache(self, cache: DynamicCache) -> None:
        if self.lender is not None:
            self.lender.give_back(self)
        self._cache = cache

    @property
    def linear(self) -> LinearStates | None:
        """The session's linear-attention states (hybrid models; taken back from a batch first)."""
        if self.lender is not None:
            self.lender.give_back(self)
        return self._linear

    @linear.setter
    def linear(self, linear: LinearStates | None) -> None:
        if self.lender is not None:
            self.lender.give_back(self)
        self._linear = linear

    @property
    def model_cache(self) -> DynamicCache:
        """The cache a forward of this session runs over: its own, with a hybrid model's linear
        states in their layers (the same layer objects: the forward updates both)."""
        cache = self.cache
        return cache if self._linear is None else self._linear.model_cache(cache)

    @property
    def num_layers(self) -> int:
        """KV layers (a hybrid model's full-attention layers)."""
        return len(self._cache.layers)

    @property
    def cache_length(self) -> int:
        """Entries of the longest layer (all layers have the same length unless per-layer budgets)."""
        return max(self.cache_lengths, default=0)

    @property
    def cache_lengths(self) -> list[int]:
        """Entries per layer (read from the batch's bookkeeping while lent: no K/V move)."""
        if self.lender is not None:
            return self.lender.lengths_of(self)
        return [0 if layer.keys is None else int(layer.keys.shape[2]) for layer in self._cache.layers]

    def cache_bytes(self) -> int:
        """K/V bytes of every layer, plus what the cache extension and a hybrid model's linear
        states keep on the device."""
        extra = self.extension.nbytes() if self.extension is not None else 0
        extra += self._linear.nbytes() if self._linear is not None else 0
        if self.lender is not None:
            return sum(self.lender.lengths_of(self)) * self.lender.bytes_per_entry + extra
        layers = [layer for layer in self._cache.layers if layer.keys is not None]
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in layers) + extra

    def unpruned_bytes(self, kv_bytes_per_token: int) -> int:
        """What :meth:`cache_bytes` would be with nothing pruned: every token's K/V in every KV
        layer, plus a hybrid model's linear-attention states (their size does not depend on it)."""
        linear = self._linear.nbytes() if self._linear is not None else 0
        return self.next_pos * kv_bytes_per_token + linear

    def checkpoint(self, rewrites: bool = False) -> Checkpoint:
        """What ``rollback`` needs to undo everything fed after this point. ``rewrites``: what
        follows may remove or rewrite entries (compression of appended media), not only append."""
        extension = self.extension
        tensors = None
        if rewrites or (extension is not None and extension.rewrites_cache):
            tensors = tuple((layer.keys, layer.values) for layer in self.cache.layers)
        return Checkpoint(
            tuple(self.cache_lengths),
            self.next_pos,
            self.rope_delta,
            len(self.token_ids),
            self.pending_token,
            extension.checkpoint() if extension is not None else None,
            tensors,
            self.slots,
            dict(self.attention_bias),
            self.linear.snapshot() if self.linear is not None else None,
        )

    def rollback(self, checkpoint: Checkpoint) -> None:
        if checkpoint.tensors is not None:
            for layer, (keys, values) in zip(self.cache.layers, checkpoint.tensors, strict=True):
                layer.keys, layer.values = keys, values
        else:
            for layer, length in zip(self.cache.layers, checkpoint.lengths, strict=True):
                layer.keys = layer.keys[:, :, :length].contiguous()
                layer.values = layer.values[:, :, :length].contiguous()
        if self.extension is not None:
            self.extension.rollback(checkpoint.extension)
        if checkpoint.linear is not None and self._linear is not None:
            self._linear.restore(checkpoint.linear)
        self.next_pos, self.rope_delta = checkpoint.next_pos, checkpoint.rope_delta
        self.pending_token = checkpoint.pending_token
        self.slots, self.attention_bias = checkpoint.slots, dict(checkpoint.bias)
        del self.token_ids[checkpoint.token_count :]

    def forward_context(self) -> contextlib.AbstractContextManager:
        """What every forward of this session runs inside: its recycled-entry biases, and its cache
        extension's retained memory and decode observers."""
        extension = self.extension
        if extension is None:
            return hooks(bias=self.attention_bias)
        memories = {i: m for i in range(self.num_layers) if (m := extension.memory(i)) is not None}
        return hooks(bias=self.attention_bias, retained=memories, observers=extension.observers())
