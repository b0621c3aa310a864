"""The worker's engine: the only API the service layer calls.

Media decoding runs in a crash-isolated child process; all model work runs on one compute thread
(one model instance per worker is not safe to share between threads), so turns are serialized and
a session's turns happen in the order they were admitted. Each RPC drives an async generator that
streams events from the compute thread; when the caller goes away or its deadline passes, the turn
stops at the next decode step and the session is rolled back to where it was before the turn.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from videoqa.worker.errors import (
    InvalidInput,
    LimitExceeded,
    NotReady,
    Overloaded,
    TurnCancelled,
    TurnDeadlineExceeded,
    VideoQAError,
)
from videoqa.worker.scheduler import DecodeRequest, Turn, TurnScheduler
from videoqa.worker.settings import WorkerSettings
from videoqa.worker.telemetry import CacheBuilt, Telemetry
from videoqa.worker.types import (
    Event,
    FinishReason,
    GenerationParams,
    Limits,
    MediaKind,
    MethodDescription,
    ModelDescription,
    ProgressEvent,
    PruningSpec,
    SamplingSpec,
    SessionEvent,
    SessionSnapshot,
    Stage,
    StatsEvent,
    Timings,
    TokenEvent,
    TurnStats,
)

log = logging.getLogger(__name__)

Emit = Callable[[Event], None]
T = TypeVar("T")


@dataclass
class CreateRequest:
    """A validated-at-the-edge upload, as the engine receives it."""

    tenant: str
    session_id: str
    model: str
    media_kind: MediaKind
    #: The video file's bytes, or one encoded image per list item.
    payload: bytes | list[bytes]
    sampling: SamplingSpec
    pruning: PruningSpec
    question: str | None
    generation: GenerationParams
    image_fps: float = 0.0
    upload_s: float = 0.0


class TurnControl:
    """Lets the RPC side stop a turn that runs on the compute thread."""

    def __init__(self, deadline: float | None = None):
        #: ``time.monotonic()`` value after which the turn is abandoned.
        self.deadline = deadline
        self.cancelled = threading.Event()

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise TurnCancelled("the caller cancelled the request")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TurnDeadlineExceeded("the request's deadline passed")


def make_store(settings: WorkerSettings):
    """Redis when a URL is configured, else the in-process store (single-process default)."""
    from videoqa.worker.kvcache.store import InProcessStore, RedisStore

    if settings.redis_url:
        return RedisStore(
            settings.redis_url,
            ttl_s=settings.session_ttl_s,
            max_session_bytes=settings.max_session_bytes,
            chunk_bytes=settings.store_chunk_bytes,
            username=settings.redis_username,
            password=settings.redis_password.get_secret_value() if settings.redis_password else None,
            ca_certs=settings.redis_ca_certs,
        )
    return InProcessStore(
        ttl_s=settings.session_ttl_s,
        max_session_bytes=settings.max_session_bytes,
        max_sessions=settings.max_sessions,
        chunk_bytes=settings.store_chunk_bytes,
    )


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


@dataclass
class _FirstTurn:
    """Everything the compute thread needs to build a new session (validated on the RPC side)."""

    request: CreateRequest
    model_id: str
    method: object
    sampling: SamplingSpec
    generation: GenerationParams
    question: str | None
    media: object


def _stage(emit: Emit, control: TurnControl, stage: Stage, work: Callable[[], T], describe: Callable[[T], str]):
    """Run one timed stage between its start and end progress events; returns (result, seconds)."""
    control.check()
    emit(ProgressEvent(stage, 0.0))
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    emit(ProgressEvent(stage, 1.0, seconds, describe(result)))
    return result, seconds


def _reset_gpu_peak(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def _gpu_peak(device) -> int:
    """Peak CUDA memory allocated since the last reset (0 off CUDA)."""
    if device.type != "cuda":
        return 0
    import torch

    return int(torch.cuda.max_memory_allocated(device))


class Engine:
    """Loads the models, holds the sessions, and runs turns."""

    def __init__(self, settings: WorkerSettings | None = None, decoder=None, store=None):
        from videoqa.worker.sessions import SessionManager

        self.settings = settings or WorkerSettings()
        self.models: dict = {}
        self._generators: dict = {}
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
        self._scheduler = TurnScheduler(self.settings.max_batch_size, self.settings.kv_budget_bytes)
        self._admission = threading.Lock()
        self._queued = 0
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
            self._generators[model_id] = ModelRunner(lm)
            log.info(
                "loaded %s (%s, revision %s) in %.1fs", model_id, lm.family, lm.revision, time.perf_counter() - started
            )
        if self._decoder is None:
            from videoqa.worker.video.decode import MediaDecoder

            self._decoder = MediaDecoder(timeout_s=self.settings.decode_timeout_s)
        self.ready = True

    def close(self) -> None:
        self.ready = False
        self._scheduler.close()
        if self._decoder is not None:
            self._decoder.close()

    # --- descriptions ----------------------------------------------------------------------------

    @property
    def default_model(self) -> str:
        return self.settings.models[0]

    def limits(self) -> Limits:
        s = self.settings
        return Limits(
            max_upload_bytes=s.max_upload_bytes,
            max_frames=s.max_frames,
            max_images=s.max_images,
            max_resolution=s.max_resolution,
            max_question_chars=s.max_question_chars,
            max_new_tokens=s.max_new_tokens,
            default_frames=s.default_frames,
            default_max_new_tokens=s.default_max_new_tokens,
        )

    def describe_models(self) -> list[ModelDescription]:
        return [
            ModelDescription(
                id=lm.model_id,
                family=lm.family,
                is_default=lm.model_id == self.default_model,
                revision=lm.revision,
                dtype=str(lm.dtype).removeprefix("torch."),
                kv_bytes_per_token=lm.kv_bytes_per_token,
            )
            for lm in self.models.values()
        ]

    def describe_methods(self) -> list[MethodDescription]:
        from videoqa.worker.pruning.registry import describe_methods

        return describe_methods()

    # --- validation ------------------------------------------------------------------------------

    def _require_ready(self) -> None:
        if not self.ready:
            raise NotReady("the worker is still loading its model", retry_after_s=5.0)

    def resolve_sampling(self, spec: SamplingSpec) -> SamplingSpec:
        """Apply server limits and defaults to a requested sampling spec."""
        s = self.settings
        if spec.num_frames is not None and spec.num_frames <= 0:
            raise InvalidInput("sampling.num_frames must be at least 1", field="sampling.num_frames")
        if spec.fps is not None and not spec.fps > 0:
            raise InvalidInput("sampling.fps must be positive", field="sampling.fps")
        if spec.max_frames > s.max_frames:
            raise LimitExceeded(
                f"sampling.max_frames {spec.max_frames} exceeds this server's limit of {s.max_frames}",
                field="sampling.max_frames",
            )
        if spec.num_frames is not None and spec.num_frames > s.max_frames:
            raise LimitExceeded(
                f"{spec.num_frames} frames requested; this server samples at most {s.max_frames}",
                field="sampling.num_frames",
            )
        if spec.max_resolution > s.max_resolution:
            raise LimitExceeded(
                f"sampling.max_resolution {spec.max_resolution} exceeds the limit of {s.max_resolution}",
                field="sampling.max_resolution",
            )
        return SamplingSpec(
            num_frames=spec.num_frames,
            fps=spec.fps,
            max_frames=spec.max_frames or s.max_frames,
            max_resolution=spec.max_resolution or s.max_resolution,
            default_frames=min(s.default_frames, spec.max_frames or s.max_frames),
        )

    def resolve_generation(self, params: GenerationParams) -> GenerationParams:
        s = self.settings
        if params.max_new_tokens < 0 or params.max_new_tokens > s.max_new_tokens:
            raise LimitExceeded(
                f"max_new_tokens {params.max_new_tokens} exceeds the limit of {s.max_new_tokens}",
                field="generation.max_new_tokens",
            )
        if not (params.temperature >= 0) or params.temperature > 100:
            raise InvalidInput("temperature must be in [0, 100]", field="generation.temperature")
        if not (0 <= params.top_p <= 1):
            raise InvalidInput("top_p must be in [0, 1]", field="generation.top_p")
        return GenerationParams(
            max_new_tokens=params.max_new_tokens or s.default_max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p or 1.0,
            seed=params.seed,
        )

    def validate_question(self, question: str) -> str:
        if not question or not question.strip():
            raise InvalidInput("the question is empty", field="question")
        if len(question) > self.settings.max_question_chars:
            raise InvalidInput(
                f"the question has {len(question)} characters; the limit is {self.settings.max_question_chars}",
                field="question",
            )
        return question

    def _validate_payload(self, kind: MediaKind, payload: bytes | list[bytes]) -> None:
        s = self.settings
        if kind == MediaKind.IMAGES:
            assert isinstance(payload, list)
            if not payload:
                raise InvalidInput("the image sequence is empty", field="image")
            if len(payload) > s.max_images:
                raise LimitExceeded(f"{len(payload)} images uploaded; the limit is {s.max_images}", field="image")
            if any(not part for part in payload):
                raise InvalidInput("an image of the sequence is empty", field="image")
            size = sum(len(part) for part in payload)
        else:
            if not payload:
                raise InvalidInput("the upload is empty", field="video_chunk")
            size = len(payload)
        if size > s.max_upload_bytes:
            raise LimitExceeded(f"the upload has {size} bytes; the limit is {s.max_upload_bytes}")

    # --- turns -----------------------------------------------------------------------------------

    async def create_session(self, req: CreateRequest, control: TurnControl) -> AsyncIterator[Event]:
        """Decode, encode, prefill, prune and save; then answer ``req.question`` if given."""
        from videoqa.worker.pruning.registry import build_method

        self._require_ready()
        model_id = req.model or self.default_model
        if model_id not in self.models:
            raise InvalidInput(f"unknown model {model_id!r}; available: {', '.join(self.models)}", field="model")
        method = build_method(req.pruning)
        sampling = self.resolve_sampling(req.sampling)
        generation = self.resolve_generation(req.generation)
        question = self.validate_question(req.question) if req.question else None
        self._validate_payload(req.media_kind, req.payload)
        self.sessions.reserve_check()

        started = time.perf_counter()
        yield ProgressEvent(Stage.DECODE, 0.0)
        timeout = self.settings.decode_timeout_s
        remaining = control.remaining()
        if remaining is not None:
            timeout = max(0.01, min(timeout, remaining))
        media = await asyncio.to_thread(
            self._decoder.decode, req.media_kind, req.payload, sampling, req.image_fps or 1.0, timeout
        )
        control.check()
        decode_s = time.perf_counter() - started
        yield ProgressEvent(Stage.DECODE, 1.0, decode_s, f"{len(media.indices)} frames")

        plan = _FirstTurn(req, model_id, method, sampling, generation, question, media)

        def job(emit: Emit, queue_s: float) -> Turn:
            timings = Timings(upload_s=req.upload_s, decode_s=decode_s, queue_s=queue_s)
            yield from self._first_turn(plan, control, emit, timings, started)

        reserve = self._estimate_new_session_bytes(model_id, media, generation)
        async for event in self._run(job, control, reserve):
            yield event

    def _estimate_new_session_bytes(self, model_id: str, media, generation: GenerationParams) -> int:
        """KV bytes a new session may take while its turn runs: its full (unpruned) prompt plus the
        answer. Visual tokens are estimated from the frames and the vision tower's patching."""
        lm = self.models[model_id]
        vision = getattr(lm.model.config, "vision_config", None)
        patch = getattr(vision, "patch_size", 14) * getattr(vision, "spatial_merge_size", 2)
        group = getattr(vision, "temporal_patch_size", 1)
        height, width = media.frames.shape[1:3] if media.frames.ndim == 4 else (patch, patch)
        per_frame = -(-height // patch) * -(-width // patch)
        tokens = -(-len(media.indices) // group) * per_frame + 256 + generation.max_new_tokens
        return tokens * lm.kv_bytes_per_token

    def _first_turn(self, plan: _FirstTurn, control: TurnControl, emit: Emit, timings: Timings, started: float) -> Turn:
        from videoqa.worker.pruning.pipeline import PrunedPrefill
        from videoqa.worker.sessions import Session

        lm, gen, req = self.models[plan.model_id], self._generators[plan.model_id], plan.request
        _reset_gpu_peak(lm.device)
        prompt, timings.encode_s = _stage(
            emit,
            control,
            Stage.ENCODE,
            lambda: lm.adapter.prepare(plan.media, plan.question),
            lambda p: f"{p.layout.num_visual_tokens} visual tokens",
        )
        pruner = PrunedPrefill(gen, plan.method, question_aware=plan.question is not None)
        (state, logits), timings.prefill_s = _stage(
            emit,
            control,
            Stage.PREFILL,
            lambda: pruner.prefill(prompt),
            lambda _: f"{prompt.layout.prompt_length} tokens",
        )
        result, timings.prune_s = _stage(
            emit, control, Stage.PRUNE, lambda: pruner.prune(state), lambda _: f"{state.cache_length} cache entries"
        )
        session = Session(
            session_id=req.session_id,
            tenant=req.tenant,
            model_id=plan.model_id,
            media_kind=req.media_kind,
            sampling=plan.sampling,
            pruning=PruningSpec(plan.method.name, dict(plan.method.values), plan.method.budget),
            media=plan.media,
            layout=prompt.layout,
            state=state,
            visual_tokens_after=result.visual_kept,
            recycled_tokens=result.recycled,
            kv_bytes_per_token=lm.kv_bytes_per_token,
        )
        session.extra["awaiting_question"] = plan.question is None
        plan.media.frames = plan.media.frames[:0]  # the cache is what we keep; drop the pixels
        _, timings.save_s = _stage(emit, control, Stage.SAVE, lambda: self._store_new(session, plan.question), str)
        self.telemetry.record(
            CacheBuilt(
                model=plan.model_id,
                method=plan.method.name,
                frames=len(plan.media.indices),
                visual_tokens=prompt.layout.num_visual_tokens,
                visual_tokens_kept=result.visual_kept,
                recycled_tokens=result.recycled,
                kv_bytes_full=state.next_pos * lm.kv_bytes_per_token,
                kv_bytes_compressed=state.cache_bytes(),
                decode_s=timings.decode_s,
                encode_s=timings.encode_s,
                prefill_s=timings.prefill_s,
                prune_s=timings.prune_s,
            )
        )
        emit(SessionEvent(session.snapshot()))
        if plan.question is not None:
            yield from self._answer(
                session,
                gen,
                logits,
                prompt.layout.prompt_length,
                plan.generation,
                control,
                emit,
                timings,
                started,
                first=True,
            )

    def _store_new(self, session, question: str | None) -> str:
        """Store a new session. If the store is unreachable and a question came with the upload,
        the question is still answered (it needs no stored session); the session is not kept."""
        try:
            self.sessions.create(session)
            return ""
        except NotReady:
            if question is None:
                raise
            session.extra["unstored"] = True
            self.counters["sessions_unstored"] += 1
            return "not stored: the session store is unavailable; this answer is the only one"

    async def ask(
        self, tenant: str, session_id: str, question: str, params: GenerationParams, control: TurnControl
    ) -> AsyncIterator[Event]:
        """Answer a (follow-up) question on an existing session."""
        self._require_ready()
        self.validate_question(question)
        generation = self.resolve_generation(params)
        started = time.perf_counter()
        # Turns on one session run one at a time across workers; waiting respects the deadline.
        lease = await self.sessions.lease(session_id, control.deadline)

        def job(emit: Emit, queue_s: float) -> Turn:
            try:
                yield from self._follow_up(tenant, session_id, question, generation, control, emit, queue_s, started)
            finally:
                lease.release()  # as soon as the turn ends, whatever becomes of the RPC

        reserve = self.sessions.estimate_bytes(session_id) + generation.max_new_tokens * self._bytes_per_token()
        try:
            async for event in self._run(job, control, reserve):
                yield event
        except Overloaded:  # refused before the job was queued: it will never release the lease
            await asyncio.to_thread(lease.release)
            raise

    def _bytes_per_token(self) -> int:
        return max(lm.kv_bytes_per_token for lm in self.models.values())

    def _follow_up(self, tenant, session_id, question, generation, control, emit, queue_s, started) -> Turn:
        """One follow-up turn on the compute thread: restore (hot tier or store), feed, answer."""
        session = self.sessions.get(tenant, session_id)
        gen = self._generators[session.model_id]
        _reset_gpu_peak(gen.lm.device)
        control.check()
        checkpoint = session.state.checkpoint()
        try:
            ids = gen.turn_input(session.state, question, first=session.extra.get("awaiting_question", False))
            logits = gen.feed(session.state, ids)
        except BaseException:
            session.state.rollback(checkpoint)
            raise
        timings = Timings(queue_s=queue_s)
        yield from self._answer(session, gen, logits, len(ids), generation, control, emit, timings, started, checkpoint)

    def _answer(
        self,
        session,
        gen,
        logits,
        prompt_tokens: int,
        params: GenerationParams,
        control: TurnControl,
        emit: Emit,
        timings: Timings,
        started: float,
        checkpoint=None,
        first: bool = False,
    ) -> Turn:
        """Stream an answer; commit the turn only if it completes, else roll the session back.
        ``first``: this turn built the session's video cache (its TTFT includes that). Each token
        but the last is fed back through the scheduler (batched with other turns' tokens)."""
        from videoqa.worker.model.generate import TextStreamer, sampler

        state = session.state
        checkpoint = checkpoint or state.checkpoint()
        streamer = TextStreamer(gen.lm.tokenizer)
        choose = sampler(params)
        t0 = previous = time.perf_counter()
        count, last, gaps = 0, None, []
        try:
            for index in range(params.max_new_tokens):
                token = choose(logits)
                state.pending_token = token
                now = time.perf_counter()
                if index == 0:
                    timings.ttft_s = now - started
                else:
                    gaps.append(now - previous)
                previous = now
                count, last = index + 1, token
                self.counters["generated_tokens"] += 1
                emit(TokenEvent(streamer.push(token), token, index))
                if token in gen.eos or index == params.max_new_tokens - 1:
                    break
                control.check()
                logits = yield DecodeRequest(gen.lm, state, token)
                state.pending_token = None
                if state.extension is not None:  # e.g. hae's recycle bin, every few tokens
                    state.extension.after_token(state)
        except BaseException as stopped:
            state.rollback(checkpoint)
            # Counted only once the session is back as it was: a reader that waits on the counter
            # must never see the abandoned turn's tokens.
            if isinstance(stopped, TurnCancelled):
                self.counters["turns_cancelled"] += 1
            elif isinstance(stopped, TurnDeadlineExceeded):
                self.counters["turns_deadline_exceeded"] += 1
            raise
        timings.generate_s = time.perf_counter() - t0
        awaiting = session.extra.get("awaiting_question", False)
        session.turns += 1
        session.extra["awaiting_question"] = False
        t0 = time.perf_counter()
        try:
            if not session.extra.get("unstored"):
                self.sessions.save_turn(session)
        except BaseException:  # not stored: the session stays at its last saved turn
            session.turns -= 1
            session.extra["awaiting_question"] = awaiting
            state.rollback(checkpoint)
            raise
        timings.save_s += time.perf_counter() - t0
        timings.total_s = time.perf_counter() - started
        self.counters["turns_completed"] += 1
        finish = FinishReason.STOP if last in gen.eos else FinishReason.LENGTH
        stats = self._stats(session, prompt_tokens, count, finish, timings)
        stats.first, stats.token_gaps_s, stats.gpu_peak_bytes = first, gaps, _gpu_peak(gen.lm.device)
        self.telemetry.record(stats)
        emit(StatsEvent(stats))

    @staticmethod
    def _stats(session, prompt_tokens: int, generated: int, finish: FinishReason, timings: Timings) -> TurnStats:
        state = session.state
        visual, recycled = session.live_counts()
        return TurnStats(
            session_id=session.session_id,
            model=session.model_id,
            method=session.pruning.method,
            turn=session.turns,
            frames_used=len(session.media.indices),
            visual_tokens_before=session.layout.num_visual_tokens,
            visual_tokens_after=visual,
            recycled_tokens=recycled,
            kv_bytes_before=state.next_pos * session.kv_bytes_per_token,
            kv_bytes_after=state.cache_bytes(),
            context_length=state.next_pos,
            cache_length=state.cache_length,
            prompt_tokens=prompt_tokens,
            generated_tokens=generated,
            finish_reason=finish,
            timings=timings,
        )

    def get_session(self, tenant: str, session_id: str) -> SessionSnapshot:
        return self.sessions.get(tenant, session_id).snapshot()

    def delete_session(self, tenant: str, session_id: str) -> None:
        self.sessions.delete(tenant, session_id)

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
        self, job: Callable[[Emit, float], Turn], control: TurnControl, reserve_bytes: int = 0
    ) -> AsyncIterator[Event]:
        """Run the turn ``job`` makes on the compute thread (admitted when ``reserve_bytes`` of KV
        fit the budget), yielding the events it emits as they come."""
        with self._admit():
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()

            def put(item) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                except RuntimeError:  # the event loop closed (server shutting down)
                    control.cancelled.set()

            def finished(error: BaseException | None) -> None:
                if error is None:
                    put(_DONE)
                    return
                if not isinstance(error, VideoQAError):  # handed to the RPC side, which maps it to a status
                    log.error("turn failed", exc_info=error)
                if not isinstance(error, TurnCancelled | TurnDeadlineExceeded):
                    self.counters["turns_failed"] += 1
                put(_Failure(error))

            self._scheduler.submit(lambda queue_s: job(put, queue_s), reserve_bytes, finished)
            try:
                while True:
                    item = await queue.get()
                    if item is _DONE:
                        return
                    if isinstance(item, _Failure):
                        raise item.error
                    yield item
            finally:
                control.cancelled.set()  # stops the job at its next check if it is still running
