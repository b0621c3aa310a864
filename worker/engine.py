"""The worker's engine: the only API the service layer calls.

A turn runs in stages (``worker.turns``): its I/O stages (media decoding in a crash-isolated
child process, preprocessing, restoring a session from the store, saving it, estimating its size)
run in a thread pool; its model work runs on the one compute thread (``worker.scheduler``), which
interleaves prefill chunks of new uploads with batched decode steps of running answers. Nothing
here blocks the event loop. Each RPC drives an async generator that streams the turn's events;
when the caller goes away or its deadline passes, the turn stops at its next step and its session
is rolled back to where it was before the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from videoqa.worker.errors import InvalidInput, NotReady, Overloaded, TurnCancelled, TurnDeadlineExceeded, VideoQAError
from videoqa.worker.kvcache.outcome import StoredOutcome, request_digest
from videoqa.worker.model.chunks import Chunking
from videoqa.worker.model.generate import TextStreamer
from videoqa.worker.requests import AppendRequest, CreateRequest, RequestLimits
from videoqa.worker.scheduler import TurnMeter, TurnScheduler
from videoqa.worker.settings import WorkerSettings
from videoqa.worker.telemetry import Telemetry
from videoqa.worker.turns import AnswerText, NewSegment, NewSession, TurnControl, TurnRunner
from videoqa.worker.types import (
    Event,
    GenerationParams,
    Limits,
    MethodDescription,
    ModelDescription,
    ProgressEvent,
    SessionEvent,
    SessionSnapshot,
    Stage,
    StatsEvent,
    Timings,
    TokenEvent,
)

log = logging.getLogger(__name__)

Emit = Callable[[Event], None]
T = TypeVar("T")

__all__ = ["AppendRequest", "CreateRequest", "Engine", "TurnControl", "make_store"]


def make_store(settings: WorkerSettings):
    """Redis when a URL is configured, else the in-process store (single-process default)."""
    from videoqa.worker.kvcache.memory_store import InProcessStore
    from videoqa.worker.kvcache.store import RedisStore

    if settings.redis_url:
        return RedisStore(
            settings.redis_url,
            ttl_s=settings.session_ttl_s,
            max_session_bytes=settings.max_session_bytes,
            chunk_bytes=settings.store_chunk_bytes,
            username=settings.redis_username,
            password=settings.redis_password.get_secret_value() if settings.redis_password else None,
            ca_certs=settings.redis_ca_certs,
            timeout_s=settings.redis_timeout_s,
            replica_acks=settings.redis_replica_acks,
        )
    return InProcessStore(
        ttl_s=settings.session_ttl_s,
        max_session_bytes=settings.max_session_bytes,
        max_sessions=settings.max_sessions,
        chunk_bytes=settings.store_chunk_bytes,
    )


def _payload_size(payload: bytes | list[bytes]) -> int:
    return len(payload) if isinstance(payload, bytes | bytearray) else sum(len(part) for part in payload)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _Outbox:
    """Events from the compute thread to the RPCs' queues on the event loop, delivered in batches.

    Waking the event loop from another thread costs a system call (a write to its self-pipe);
    doing it per token event would cost the compute thread more than a small model's decode step.
    Events are queued here during a pass of the compute loop, and :meth:`flush` (called after
    every pass) delivers all of them with one wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: list[tuple[asyncio.Queue, object]] = []
        self._lock = threading.Lock()

    def put(self, queue: asyncio.Queue, item: object) -> None:
        with self._lock:
            self._items.append((queue, item))

    def flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        if items:
            self.loop.call_soon_threadsafe(self._deliver, items)

    @staticmethod
    def _deliver(items: list[tuple[asyncio.Queue, object]]) -> None:
        for queue, item in items:
            queue.put_nowait(item)


_DONE = object()


class Engine:
    """Loads the models, holds the sessions, and runs turns."""

    def __init__(self, settings: WorkerSettings | None = None, decoder=None, store=None):
        from videoqa.worker.sessions import SessionManager

        self.settings = settings or WorkerSettings()
        self.requests = RequestLimits(self.settings)
        self.models: dict = {}
        self._runners: dict = {}
        #: Plain stats (counters, timed operations, per-turn records); ``service.metrics`` exports them.
        self.telemetry = Telemetry()
        self.counters = self.telemetry.counters
        self.sessions = SessionManager(
            store or make_store(self.settings),
            models=self.models,
            hot_bytes=self.settings.hot_tier_bytes,
            quantize=self.settings.storage_quantization,
            lease_s=self.settings.lock_lease_s,
            telemetry=self.telemetry,
        )
        self._decoder = decoder
        #: The I/O stages of turns (restore, save, preprocessing, estimates, lookups).
        self._io = ThreadPoolExecutor(self.settings.io_threads, thread_name_prefix="videoqa-io")
        self._scheduler = TurnScheduler(
            self.settings.max_batch_size, self.settings.kv_budget_bytes, after_pass=self._flush_events
        )
        s = self.settings
        chunking = Chunking(s.prefill_chunk_frames, s.prefill_chunk_tokens, s.prefill_slack, s.prefill_step_tokens)
        self._turns = TurnRunner(self._runners, self.sessions, self.telemetry, self._io, chunking)
        self._admission = threading.Lock()
        self._queued = 0
        self._outboxes: dict[asyncio.AbstractEventLoop, _Outbox] = {}
        self.ready = False

    # --- lifecycle -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load every configured model (blocking; call it off the event loop)."""
        from videoqa.worker.model.generate import ModelRunner
        from videoqa.worker.model.loader import load_model

        for model_id in self.settings.models:
            started = time.perf_counter()
            lm = load_model(model_id, device=self.settings.device, dtype=self.settings.dtype)
            self.models[model_id] = lm
            self._runners[model_id] = ModelRunner(lm)
            log.info(
                "loaded %s (%s, revision %s) in %.1fs", model_id, lm.family, lm.revision, time.perf_counter() - started
            )
        if self._decoder is None:
            from videoqa.worker.video.decode import MediaDecoder

            self._decoder = MediaDecoder(timeout_s=self.settings.decode_timeout_s)
        self._scheduler.measure_devices([lm.device for lm in self.models.values()])
        self.ready = True

    def close(self) -> None:
        self.ready = False
        self._scheduler.close()
        if self._decoder is not None:
            self._decoder.close()
        self._io.shutdown(wait=False, cancel_futures=True)

    # --- descriptions ----------------------------------------------------------------------------

    @property
    def default_model(self) -> str:
        return self.settings.models[0]

    def limits(self) -> Limits:
        return self.requests.describe()

    def describe_models(self) -> list[ModelDescription]:
        return [
            ModelDescription(
                id=lm.model_id,
                family=lm.family,
                is_default=lm.model_id == self.default_model,
                revision=lm.revision,
                dtype=str(lm.dtype).removeprefix("torch."),
                kv_bytes_per_token=lm.kv_bytes_per_token,
                attention_layers=lm.num_layers,
                linear_attention_layers=len(lm.layer_kinds.linear_layers),
                linear_state_bytes=lm.linear_state_bytes,
            )
            for lm in self.models.values()
        ]

    def describe_methods(self) -> list[MethodDescription]:
        from videoqa.worker.pruning.registry import describe_methods

        return describe_methods()

    def describe_reductions(self) -> list[MethodDescription]:
        from videoqa.worker.reduction.registry import describe_reductions

        return describe_reductions()

    # --- validation ------------------------------------------------------------------------------

    def _require_ready(self) -> None:
        if not self.ready:
            raise NotReady("the worker is still loading its model", retry_after_s=5.0)

    async def _off_loop(self, fn: Callable[..., T], *args) -> T:
        """Run ``fn`` in the I/O pool (never on the event loop, never on the compute thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _decode(self, kind, payload, sampling, image_fps: float, control: TurnControl):
        timeout = self.settings.decode_timeout_s
        remaining = control.remaining()
        if remaining is not None:
            timeout = max(0.01, min(timeout, remaining))
        media = await asyncio.to_thread(self._decoder.decode, kind, payload, sampling, image_fps or 1.0, timeout)
        control.check()
        return media

    # --- turns -----------------------------------------------------------------------------------

    async def create_session(self, req: CreateRequest, control: TurnControl) -> AsyncIterator[Event]:
        """Decode, encode, prefill in chunks with compression, save; then answer ``req.question``."""
        from videoqa.worker.pruning.registry import build_method
        from videoqa.worker.reduction.registry import build_reduction

        self._require_ready()
        model_id = req.model or self.default_model
        if model_id not in self.models:
            raise InvalidInput(f"unknown model {model_id!r}; available: {', '.join(self.models)}", field="model")
        method = build_method(req.pruning)
        reduction = build_reduction(req.pruning.reduction)
        sampling = self.requests.sampling(req.sampling)
        generation = self.requests.generation(req.generation)
        question = self.requests.question(req.question) if req.question else None
        self.requests.payload(req.media_kind, req.payload)
        self.sessions.reserve_check()

        started = time.perf_counter()
        timings = Timings(upload_s=req.upload_s)
        yield ProgressEvent(Stage.DECODE, 0.0)
        media = await self._decode(req.media_kind, req.payload, sampling, req.image_fps, control)
        timings.decode_s = time.perf_counter() - started
        yield ProgressEvent(Stage.DECODE, 1.0, timings.decode_s, f"{len(media.indices)} frames")
        self.requests.session_frames(0, len(media.indices))

        lm = self.models[model_id]
        yield ProgressEvent(Stage.ENCODE, 0.0)
        encoding = time.perf_counter()
        prompt = await self._off_loop(lm.adapter.prepare, media, question)
        media.frames = media.frames[:0]  # the processor's tensors are what the prefill needs; drop the pixels
        timings.encode_s = time.perf_counter() - encoding
        yield ProgressEvent(Stage.ENCODE, 1.0, timings.encode_s, f"{prompt.layout.num_visual_tokens} visual tokens")
        plan = NewSession(
            req.tenant,
            req.session_id,
            model_id,
            req.media_kind,
            sampling,
            method,
            generation,
            question,
            media,
            prompt,
            timings,
            reduction,
        )

        def job(emit: Emit, meter: TurnMeter):
            return self._turns.first_turn(plan, control, emit, meter, started)

        reserve = self._reserve_for_prompt(lm, prompt.layout, method, reduction)
        async for event in self._run(job, control, reserve + generation.max_new_tokens * lm.kv_bytes_per_token):
            yield event

    def _reserve_for_prompt(self, lm, layout, method, reduction=None) -> int:
        """KV bytes a prefill may hold at its peak: the text, plus the visual entries the method
        keeps between chunks (slack x its budget) and one chunk when it compresses progressively,
        else every visual token (of those a reduction lets into the language model: at most its
        retention's share and one per frame span); and a hybrid model's linear-attention state
        twice (the session's, and the copy a turn's checkpoint keeps)."""
        visual_tokens = layout.num_visual_tokens
        text = layout.prompt_length - visual_tokens
        if reduction is not None:
            visual_tokens = min(visual_tokens, reduction.target(visual_tokens) + len(layout.frame_spans))
        chunk = self.settings.prefill_chunk_tokens or visual_tokens
        if method.progressive and method.compresses and self.settings.prefill_chunk_frames:
            held = min(visual_tokens, method.slots_for(visual_tokens, self.settings.prefill_slack) + chunk)
        else:
            held = visual_tokens
        return (text + held) * lm.kv_bytes_per_token + 2 * lm.linear_state_bytes

    async def ask(
        self,
        tenant: str,
        session_id: str,
        question: str,
        params: GenerationParams,
        control: TurnControl,
        idempotency_key: str = "",
    ) -> AsyncIterator[Event]:
        """Answer a (follow-up) question on an existing session. With an ``idempotency_key``
        whose turn is stored already (a retry), that turn's answer and stats come back instead."""
        self._require_ready()
        self.requests.question(question)
        key = self.requests.idempotency_key(idempotency_key)
        generation = self.requests.generation(params)
        request = request_digest("ask", question, repr(generation))
        started = time.perf_counter()
        # Turns on one session run one at a time across workers, in arrival order in this worker;
        # waiting respects the deadline.
        lease = await self.sessions.lease(session_id, control.deadline)
        try:
            stored = await self._off_loop(self.sessions.stored_outcome, tenant, session_id, key, request)
            if stored is None:
                size = await self._off_loop(self.sessions.estimate_bytes, session_id)
                restoring = self._io.submit(self.sessions.get, tenant, session_id)  # prefetched while queued
        except BaseException:
            await self._off_loop(lease.release)
            raise
        if stored is not None:
            await self._off_loop(lease.release)
            for event in self._replayed_answer(stored):
                yield event
            return
        stored_as = StoredOutcome("answer", request) if key else None

        def job(emit: Emit, meter: TurnMeter):
            return self._turns.follow_up(restoring, question, generation, control, emit, meter, started, stored_as, key)

        reserve = size + generation.max_new_tokens * self._bytes_per_token()
        try:
            async for event in self._run(job, control, reserve, release=lease.release):
                yield event
        except Overloaded:  # refused before the job was queued: it will never release the lease
            await self._off_loop(lease.release)
            raise

    async def append(self, req: AppendRequest, control: TurnControl) -> AsyncIterator[Event]:
        """Append media to a session: decoded, prefilled in chunks after the conversation so far,
        compressed with what the session holds, stored as a delta record. With an idempotency
        key whose segment is stored already (a retry), the session is described as it is."""
        from videoqa.worker.pruning.registry import build_method
        from videoqa.worker.reduction.registry import build_reduction

        self._require_ready()
        sampling = self.requests.sampling(req.sampling)
        self.requests.payload(req.media_kind, req.payload)
        key = self.requests.idempotency_key(req.idempotency_key)
        request = request_digest("append", req.media_kind.value, repr(sampling), str(_payload_size(req.payload)))
        started = time.perf_counter()
        lease = await self.sessions.lease(req.session_id, control.deadline)
        released = False
        try:
            stored = await self._off_loop(self.sessions.stored_outcome, req.tenant, req.session_id, key, request)
            session = await self._off_loop(self.sessions.get, req.tenant, req.session_id)
            if stored is not None:
                yield SessionEvent(session.snapshot())
                return
            method = build_method(session.pruning)
            if not method.progressive:
                raise InvalidInput(
                    f"method {method.name!r} compresses once, after the whole prefill: media cannot be appended to "
                    f"its sessions (create the session with a method that compresses progressively)",
                    field="session_id",
                )
            timings = Timings(upload_s=req.upload_s)
            yield ProgressEvent(Stage.DECODE, 0.0)
            media = await self._decode(req.media_kind, req.payload, sampling, req.image_fps, control)
            timings.decode_s = time.perf_counter() - started
            yield ProgressEvent(Stage.DECODE, 1.0, timings.decode_s, f"{len(media.indices)} frames")
            self.requests.session_frames(session.frames, len(media.indices))
            lm = self.models[session.model_id]
            yield ProgressEvent(Stage.ENCODE, 0.0)
            encoding = time.perf_counter()
            state = session.state
            prompt = await self._off_loop(
                lm.adapter.prepare_segment,
                media,
                state.next_pos,
                state.rope_delta,
                not session.awaiting_question,
                state.pending_token,
                session.clock_s,
            )
            media.frames = media.frames[:0]
            timings.encode_s = time.perf_counter() - encoding
            visual = prompt.layout.num_visual_tokens
            yield ProgressEvent(Stage.ENCODE, 1.0, timings.encode_s, f"{visual} visual tokens")
            reduction = build_reduction(session.pruning.reduction)
            plan = NewSegment(req.media_kind, sampling, media, prompt, timings, reduction)
            stored_as = StoredOutcome("segment", request) if key else None

            def job(emit: Emit, meter: TurnMeter):
                return self._turns.append(session, method, plan, control, emit, meter, stored_as, key)

            reserve = state.cache_bytes() + self._reserve_for_prompt(lm, prompt.layout, method, reduction)
            released = True  # from here the lease is released when the job ends
            try:
                async for event in self._run(job, control, reserve, release=lease.release):
                    yield event
            except Overloaded:
                released = False
                raise
        finally:
            if not released:
                await self._off_loop(lease.release)

    def _replayed_answer(self, stored: StoredOutcome) -> list[Event]:
        """The events of a stored answer, as its first delivery had them (text from the same ids)."""
        stats = stored.stats
        if stats is None:
            raise InvalidInput("this idempotency key stored media, not an answer", field="idempotency_key")
        lm = self.models.get(stats.model)
        if lm is None:
            raise InvalidInput(f"the stored answer was made by {stats.model!r}, which this worker does not serve")
        streamer = TextStreamer(lm.tokenizer)
        events: list[Event] = [TokenEvent(streamer.push(token), token, i) for i, token in enumerate(stored.tokens)]
        stats.replayed = True
        events.append(StatsEvent(stats))
        return events

    def _bytes_per_token(self) -> int:
        return max(lm.kv_bytes_per_token for lm in self.models.values())

    async def get_session(self, tenant: str, session_id: str) -> SessionSnapshot:
        self._require_ready()
        return await self._off_loop(lambda: self.sessions.get(tenant, session_id).snapshot())

    async def delete_session(self, tenant: str, session_id: str) -> None:
        self._require_ready()
        await self._off_loop(self.sessions.delete, tenant, session_id)

    # --- plumbing --------------------------------------------------------------------------------

    @contextmanager
    def _admit(self):
        with self._admission:
            if self._queued >= self.settings.max_queued_turns:
                raise Overloaded(
                    f"{self._queued} turns are already waiting for this worker; retry later", retry_after_s=1.0
                )
            self._queued += 1
        try:
            yield
        finally:
            with self._admission:
                self._queued -= 1

    def _flush_events(self) -> None:
        """After every pass of the compute loop: deliver the events it produced (one wake-up per loop)."""
        for outbox in list(self._outboxes.values()):
            with contextlib.suppress(RuntimeError):  # that event loop closed
                outbox.flush()

    @property
    def queued_turns(self) -> int:
        """Turns admitted and not finished (waiting or running)."""
        return self._queued

    @property
    def running_turns(self) -> int:
        return self._scheduler.running

    @property
    def scheduler(self) -> TurnScheduler:
        return self._scheduler

    async def _run(
        self,
        job: Callable[[Emit, TurnMeter], Any],
        control: TurnControl,
        reserve_bytes: int = 0,
        release: Callable[[], None] | None = None,
    ):
        """Run the turn ``job`` makes on the compute thread (admitted when ``reserve_bytes`` of KV
        fit the budget), yielding the events it emits as they come. ``release`` (a session's turn
        lock) runs in the I/O pool as soon as the turn ends, whatever becomes of the RPC; the RPC
        reports the turn's outcome only once it has run."""
        with self._admit():
            loop = asyncio.get_running_loop()
            outbox = self._outboxes.get(loop) or self._outboxes.setdefault(loop, _Outbox(loop))
            queue: asyncio.Queue = asyncio.Queue()

            def put(item) -> None:
                try:
                    outbox.put(queue, item)
                except RuntimeError:  # the event loop closed (server shutting down)
                    control.cancelled.set()

            def finished(error: BaseException | None, _value) -> None:
                if release is not None:
                    put(self._io.submit(release))
                if error is None:
                    put(_DONE)
                    return
                if not isinstance(error, VideoQAError):  # handed to the RPC side, which maps it to a status
                    log.error("turn failed", exc_info=error)
                if not isinstance(error, TurnCancelled | TurnDeadlineExceeded):
                    self.counters["turns_failed"] += 1
                put(_Failure(error))

            self._scheduler.submit(lambda meter: job(put, meter), reserve_bytes, finished)
            streamer: TextStreamer | None = None
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, AnswerText):  # token ids become text here, off the compute thread
                        streamer = TextStreamer(item.tokenizer)
                        continue
                    if isinstance(item, TokenEvent) and streamer is not None:
                        item.text = streamer.push(item.token_id)
                    if isinstance(item, Future):  # the lock's release, before the outcome is told
                        with contextlib.suppress(Exception):
                            await asyncio.wrap_future(item)
                        continue
                    if item is _DONE:
                        return
                    if isinstance(item, _Failure):
                        raise item.error
                    yield item
            finally:
                control.cancelled.set()  # stops the job at its next check if it is still running
