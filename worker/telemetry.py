"""What the worker reports about its work, as plain data (no Prometheus here).

The worker records counters, timed operations and per-turn records into a :class:`Telemetry`;
``videoqa.service.metrics`` is the one place that turns them into Prometheus metrics, by
subscribing to it. Without a subscriber, records are dropped and counters still count (tests read
them).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timed:
    """One timed operation: ``name`` (``serialize``, ``store``), its labels, and how long it took."""

    name: str
    seconds: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Sized:
    """One measured size: ``name`` (``record_bytes``), its labels, and the value."""

    name: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StoreFailure:
    """A session store operation failed because the store was unreachable."""

    backend: str
    op: str


@dataclass(frozen=True)
class CacheBuilt:
    """A new session's video cache was built: what went in, what was kept, what each stage took."""

    model: str
    method: str
    frames: int
    visual_tokens: int
    visual_tokens_kept: int
    recycled_tokens: int
    kv_bytes_full: int
    kv_bytes_compressed: int
    decode_s: float
    encode_s: float
    prefill_s: float
    prune_s: float
    #: Visual tokens the vision tower made, before a reduction before the language model
    #: (``visual_tokens`` went into it).
    visual_tokens_encoded: int = 0


@dataclass(frozen=True)
class ChunkPrefilled:
    """One prefill chunk ran: its forward's seconds and its compression's (0 when none ran)."""

    model: str
    prefill_s: float
    prune_s: float


@dataclass(frozen=True)
class MediaAppended:
    """Media was appended to a session: what came in, how it was prefilled, the KV peak."""

    model: str
    method: str
    frames: int
    visual_tokens: int
    chunks: int
    prefill_s: float
    prune_s: float
    kv_bytes_peak: int
    #: Visual tokens the vision tower made, before a reduction (``visual_tokens`` went into the
    #: language model).
    visual_tokens_encoded: int = 0


Listener = Callable[[Any], None]


class Telemetry:
    """Counters (``counters[name]``) plus a stream of records (:class:`Timed`, :class:`Sized`,
    :class:`StoreFailure`, :class:`CacheBuilt`, ``TurnStats``) delivered to subscribers on the
    thread that records them."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def record(self, item: Any) -> None:
        for listener in self._listeners:
            listener(item)

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def size(self, name: str, value: float, **labels: str) -> None:
        if self._listeners:
            self.record(Sized(name, value, tuple(labels.items())))

    @contextmanager
    def timed(self, name: str, **labels: str) -> Iterator[None]:
        """Time the block; the record is made whether it succeeds or raises."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if self._listeners:
                self.record(Timed(name, time.perf_counter() - started, tuple(labels.items())))
