"""The worker's compute loop: turns run on one thread, and the turns that are generating decode
together, one batched step for all of them, with new turns admitted between steps.

A turn is a generator (see ``Engine``): it does its own work (decode the video, prefill, prune,
save) whenever it is advanced, and whenever it needs one token fed to its session it yields a
:class:`DecodeRequest` and receives the logits [vocab] back. The loop advances every turn that is
not waiting, then runs one :class:`~videoqa.worker.model.batch.DecodeBatch` step per model for
all the requests (at most ``max_batch`` rows each), and repeats.

Admission is memory-aware: a waiting turn starts only while the KV bytes reserved by the running
turns plus its own estimate fit ``kv_budget_bytes`` (a turn always starts when nothing runs, so a
single oversized turn still makes progress). How many turns may wait is bounded by the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

from videoqa.worker.model.batch import DecodeBatch
from videoqa.worker.model.loader import LoadedModel
from videoqa.worker.model.state import ConversationState

log = logging.getLogger(__name__)


@dataclass
class DecodeRequest:
    """Feed ``token`` to ``state`` (a session of model ``lm``); the turn receives the logits."""

    lm: LoadedModel
    state: ConversationState
    token: int


Turn = Generator[DecodeRequest, torch.Tensor, None]


@dataclass
class _Entry:
    start: Callable[[float], Turn]
    reserve_bytes: int
    finished: Callable[[BaseException | None], None]
    submitted: float = field(default_factory=time.perf_counter)
    turn: Turn | None = None
    pending: DecodeRequest | None = None
    reply: torch.Tensor | None = None


class TurnScheduler:
    """Runs submitted turns on its own thread (see the module docstring)."""

    def __init__(self, max_batch: int = 16, kv_budget_bytes: int = 0, name: str = "videoqa-compute"):
        self.max_batch = max_batch
        #: 0: no limit.
        self.kv_budget_bytes = kv_budget_bytes
        self._waiting: deque[_Entry] = deque()
        self._active: list[_Entry] = []
        self._batches: dict[tuple[int, int], DecodeBatch] = {}
        self._cv = threading.Condition()
        self._closed = False
        #: Decode steps run, rows decoded in them (their ratio is the mean batch size), the largest
        #: batch, and the most turns running at once.
        self.steps = 0
        self.rows = 0
        self.largest_batch = 0
        self.most_running = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # --- what the engine calls ------------------------------------------------------------------

    def submit(
        self, start: Callable[[float], Turn], reserve_bytes: int, finished: Callable[[BaseException | None], None]
    ) -> None:
        """Queue a turn: ``start(queue_s)`` makes its generator when it is admitted; ``finished``
        is called on the compute thread with ``None`` or the error that ended it."""
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._waiting.append(_Entry(start, max(0, reserve_bytes), finished))
            self._cv.notify()

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def reserved_bytes(self) -> int:
        return sum(entry.reserve_bytes for entry in self._active)

    def close(self) -> None:
        """Stop the loop; turns still running are closed (their ``finally`` blocks run)."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # --- the compute thread ----------------------------------------------------------------------

    def _admit_locked(self) -> None:
        while self._waiting:
            entry = self._waiting[0]
            budget = self.kv_budget_bytes
            if self._active and budget and self.reserved_bytes + entry.reserve_bytes > budget:
                return  # it waits for memory; first come, first served
            self._waiting.popleft()
            self._active.append(entry)
            self.most_running = max(self.most_running, len(self._active))

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._waiting and not self._active:
                    self._cv.wait()
                if self._closed:
                    break
                self._admit_locked()
            for entry in list(self._active):
                if entry.pending is None:
                    self._advance(entry)
            self._decode()
        for entry in [*self._active, *self._waiting]:
            if entry.turn is not None:
                entry.turn.close()
            entry.finished(RuntimeError("the worker is shutting down"))
        self._active.clear()
        self._waiting.clear()

    def _advance(self, entry: _Entry) -> None:
        """Run ``entry``'s turn until it asks for a decode step, ends, or fails."""
        try:
            if entry.turn is None:
                entry.turn = entry.start(time.perf_counter() - entry.submitted)
                entry.pending = next(entry.turn)
            else:
                reply, entry.reply = entry.reply, None
                entry.pending = entry.turn.send(reply)
        except StopIteration:
            self._finish(entry, None)
        except BaseException as error:  # the turn's own failure: handed back, the loop goes on
            self._finish(entry, error)

    def _finish(self, entry: _Entry, error: BaseException | None) -> None:
        with self._cv:
            self._active.remove(entry)
        try:
            entry.finished(error)
        except Exception:  # pragma: no cover - a callback bug must not stop the compute loop
            log.exception("turn completion callback failed")

    def _decode(self) -> None:
        """One batched step for every waiting request, per model, ``max_batch`` rows at a time."""
        groups: dict[int, list[_Entry]] = {}
        for entry in self._active:
            if entry.pending is not None:
                groups.setdefault(id(entry.pending.lm), []).append(entry)
        used = set()
        for model_key, entries in groups.items():
            for chunk_index, start in enumerate(range(0, len(entries), self.max_batch)):
                chunk = entries[start : start + self.max_batch]
                key = (model_key, chunk_index)
                used.add(key)
                states = [entry.pending.state for entry in chunk]
                batch = self._batches.get(key)
                try:
                    if batch is None or not batch.holds(states):
                        stale, batch = batch, DecodeBatch(chunk[0].pending.lm, states)
                        self._batches[key] = batch
                        if stale is not None:
                            stale.release()
                    logits = batch.step([entry.pending.token for entry in chunk])
                except BaseException as error:  # a failed forward fails the turns in it
                    failed = self._batches.pop(key, None)
                    if failed is not None:
                        failed.release()  # the sessions get their K/V back (the failed step's column is not kept)
                    log.exception("batched decode step failed")
                    for entry in chunk:
                        entry.pending = None
                        entry.turn.close()
                        self._finish(entry, error)
                    continue
                self.steps += 1
                self.rows += len(chunk)
                self.largest_batch = max(self.largest_batch, len(chunk))
                for entry, row in zip(chunk, logits, strict=True):
                    entry.pending, entry.reply = None, row
        for key in set(self._batches) - used:  # a batch no longer used: whatever it still holds goes back
            self._batches.pop(key).release()
