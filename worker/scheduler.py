"""The worker's compute loop: one thread that does model work only.

A turn is a generator (see ``worker.turns``) that the loop advances. Whenever it needs something
it yields a step:

- :class:`~videoqa.worker.model.generate.DecodeRequest`: feed one token to its session; it gets
  the logits [vocab] back. The requests of all turns that are generating run as one batched
  :class:`~videoqa.worker.model.batch.DecodeBatch` step per model (at most ``max_batch`` rows).
- :class:`Wait`: an I/O stage (restoring a session from the store, saving one, ...) runs in a
  thread pool off this thread; the turn is parked until its future is done, then gets its result
  (or its exception is raised inside it). Nothing that blocks runs here.
- :data:`YIELD`: it ran one prefill chunk and has more; others go first.

Each pass of the loop continues every turn that received logits (sampling is cheap), then gives
**one** turn one unit of heavier work (a prefill chunk, the start of a turn, the stage after an
I/O wait), round-robin, then runs the batched decode step. So a new upload delays running answers
by about one chunk's compute, however long its video.

Admission is memory-aware: a waiting turn starts only while the KV bytes reserved by the running
turns plus its own estimate fit ``kv_budget_bytes`` (a turn always starts when nothing runs, so a
single oversized turn still makes progress). How many turns may wait is bounded by the engine.

The loop measures itself: time busy, of which model work (see ``model.clock``), and per turn the
CUDA memory peak of the passes it was active in (the peak counter is reset every pass, so a turn
sharing batches with others gets the peak of its own passes, not the process's since start).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from videoqa.worker.model.batch import DecodeBatch
from videoqa.worker.model.clock import model_seconds
from videoqa.worker.model.generate import DecodeRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wait:
    """Park the turn until ``future`` (work running off the compute thread) is done."""

    future: Future


class _Yield:
    def __repr__(self) -> str:
        return "YIELD"


#: A turn ran one prefill chunk and has more to run.
YIELD = _Yield()

TurnStep = DecodeRequest | Wait | _Yield
Turn = Generator[TurnStep, Any, Any]


@dataclass
class TurnMeter:
    """What the loop measured for one turn: how long it waited to be admitted, and the most CUDA
    memory allocated during the passes it was active in (0 off CUDA)."""

    queue_s: float = 0.0
    gpu_peak_bytes: int = 0


@dataclass
class _Entry:
    start: Callable[[TurnMeter], Turn]
    reserve_bytes: int
    finished: Callable[[BaseException | None, Any], None]
    submitted: float = field(default_factory=time.perf_counter)
    meter: TurnMeter = field(default_factory=TurnMeter)
    turn: Turn | None = None
    #: What the turn asked for last (``None``: ready to be advanced).
    pending: TurnStep | None = None
    #: What it gets when advanced next: the logits of its decode request, or a wait's outcome.
    reply: Any = None
    error: BaseException | None = None
    #: The context variables of the call that submitted the turn (its log ids): every step of the
    #: turn runs in them on the compute thread.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class TurnScheduler:
    """Runs submitted turns on its own thread (see the module docstring)."""

    def __init__(
        self,
        max_batch: int = 16,
        kv_budget_bytes: int = 0,
        name: str = "videoqa-compute",
        devices: list[torch.device] | None = None,
        after_pass: Callable[[], None] | None = None,
    ):
        self.max_batch = max_batch
        #: 0: no limit.
        self.kv_budget_bytes = kv_budget_bytes
        self._cuda = [d for d in (devices or []) if d.type == "cuda"]
        #: Called after every pass (the engine delivers the events the pass produced).
        self._after_pass = after_pass or (lambda: None)
        self._waiting: deque[_Entry] = deque()
        self._active: list[_Entry] = []
        self._batches: dict[tuple[int, int], DecodeBatch] = {}
        self._cv = threading.Condition()
        self._closed = False
        self._turn_robin = 0
        #: Decode steps run, rows decoded in them (their ratio is the mean batch size), the largest
        #: batch, and the most turns running at once.
        self.steps = 0
        self.rows = 0
        self.largest_batch = 0
        self.most_running = 0
        #: Seconds the loop was busy (not waiting for work), and model work within them.
        self.busy_s = 0.0
        self.model_s = 0.0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # --- what the engine calls ------------------------------------------------------------------

    def submit(
        self,
        start: Callable[[TurnMeter], Turn],
        reserve_bytes: int,
        finished: Callable[[BaseException | None, Any], None],
    ) -> None:
        """Queue a turn: ``start(meter)`` makes its generator when it is admitted; ``finished`` is
        called on the compute thread with ``(None, value returned)`` or ``(error, None)``."""
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._waiting.append(_Entry(start, max(0, reserve_bytes), finished))
            self._cv.notify()

    def measure_devices(self, devices: list[torch.device]) -> None:
        """Measure the per-pass CUDA peak on ``devices`` (the models' devices; CPUs are ignored)."""
        self._cuda = list({str(d): d for d in devices if d.type == "cuda"}.values())

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
            entry.meter.queue_s = time.perf_counter() - entry.submitted
            self._active.append(entry)
            self.most_running = max(self.most_running, len(self._active))

    def _wake(self, _future: Future) -> None:
        with self._cv:
            self._cv.notify()

    def _has_work_locked(self) -> bool:
        if self._waiting and (not self._active or not self.kv_budget_bytes or self._fits_locked()):
            return True
        return any(not isinstance(e.pending, Wait) or e.pending.future.done() for e in self._active)

    def _fits_locked(self) -> bool:
        return self.reserved_bytes + self._waiting[0].reserve_bytes <= self.kv_budget_bytes

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._has_work_locked():
                    self._cv.wait()
                if self._closed:
                    break
                self._admit_locked()
            started, model_before = time.perf_counter(), model_seconds()
            present = list(self._active)  # (a turn that ends in this pass still gets its peak)
            self._reset_peak()
            self._pass()
            self._record_peak(present + [e for e in self._active if e not in present])
            self._after_pass()
            self.busy_s += time.perf_counter() - started
            self.model_s += model_seconds() - model_before
        for entry in [*self._active, *self._waiting]:
            if entry.turn is not None:
                entry.turn.close()
            entry.finished(RuntimeError("the worker is shutting down"), None)
        self._active.clear()
        self._waiting.clear()
        self._after_pass()

    def _pass(self) -> None:
        """Continue turns that got logits, give one turn its unit of heavier work, decode."""
        for entry in list(self._active):
            if isinstance(entry.pending, DecodeRequest) and entry.reply is not None:
                self._advance(entry)
        ready = [e for e in self._active if self._ready(e)]
        if ready:
            self._turn_robin = (self._turn_robin + 1) % len(ready)
            self._advance(ready[self._turn_robin])
        self._decode()

    @staticmethod
    def _ready(entry: _Entry) -> bool:
        if entry.turn is None or entry.pending is YIELD:
            return True
        return isinstance(entry.pending, Wait) and entry.pending.future.done()

    def _advance(self, entry: _Entry) -> None:
        """Run ``entry``'s turn until its next step, its end, or its failure."""
        try:
            step = entry.context.run(self._step, entry)
        except StopIteration as done:
            self._finish(entry, None, done.value)
            return
        except BaseException as error:  # the turn's own failure: handed back, the loop goes on
            self._finish(entry, error, None)
            return
        if not isinstance(step, DecodeRequest | Wait | _Yield):  # a bug in a turn: never leave it stuck
            entry.turn.close()
            self._finish(entry, TypeError(f"a turn yielded {step!r}, not a scheduler step"), None)
            return
        entry.pending = step
        if isinstance(step, Wait):
            step.future.add_done_callback(self._wake)

    @staticmethod
    def _step(entry: _Entry) -> Any:
        """Start or resume ``entry``'s turn up to its next step (in the submitting call's context)."""
        if entry.turn is None:
            entry.turn = entry.start(entry.meter)
            return next(entry.turn)
        if isinstance(entry.pending, Wait):
            future = entry.pending.future
            error = future.exception()
            return entry.turn.throw(error) if error is not None else entry.turn.send(future.result())
        reply, entry.reply = entry.reply, None
        return entry.turn.send(reply)

    def _finish(self, entry: _Entry, error: BaseException | None, value: Any) -> None:
        with self._cv:
            self._active.remove(entry)
        try:
            entry.finished(error, value)
        except Exception:  # pragma: no cover - a callback bug must not stop the compute loop
            log.exception("turn completion callback failed")

    def _decode(self) -> None:
        """One batched step for every waiting request, per model, ``max_batch`` rows at a time."""
        groups: dict[int, list[_Entry]] = {}
        for entry in self._active:
            if isinstance(entry.pending, DecodeRequest) and entry.reply is None:
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
                        self._finish(entry, error, None)
                    continue
                self.steps += 1
                self.rows += len(chunk)
                self.largest_batch = max(self.largest_batch, len(chunk))
                for entry, row in zip(chunk, logits, strict=True):
                    entry.reply = row
        for key in set(self._batches) - used:  # a batch no longer used: whatever it still holds goes back
            self._batches.pop(key).release()

    # --- measurements ----------------------------------------------------------------------------

    def _reset_peak(self) -> None:
        for device in self._cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def _record_peak(self, entries: list[_Entry]) -> None:
        if not self._cuda:
            return
        peak = max(int(torch.cuda.max_memory_allocated(device)) for device in self._cuda)
        for entry in entries:
            entry.meter.gpu_peak_bytes = max(entry.meter.gpu_peak_bytes, peak)

    @property
    def outside_model_share(self) -> float:
        """Share of the loop's busy time not spent in model work."""
        return 0.0 if self.busy_s <= 0 else max(0.0, 1.0 - self.model_s / self.busy_s)
