"""A turn's stages, as the compute thread runs them.

A turn is a generator the scheduler advances (``worker.scheduler``). It does model work itself
(prefill chunks, compression, feeding a question, sampling) and hands everything else to the I/O
pool, waiting for it with :class:`~videoqa.worker.scheduler.Wait`: restoring a session from the
store (with deserialisation and the move to the device), saving one (serialisation and the store
writes). Between prefill chunks it yields :data:`~videoqa.worker.scheduler.YIELD`, and every token
it feeds goes through a batched decode step. Three kinds of turn:

- :meth:`TurnRunner.first_turn`: a new session (chunked prefill with compression, save the
  prefix), then its question's answer if the upload came with one;
- :meth:`TurnRunner.follow_up`: a question on an existing session;
- :meth:`TurnRunner.append`: media appended to an existing session (chunked prefill after the
  conversation so far, compression of everything visual it holds, a delta record).

A turn that stops (cancellation, deadline, a failure, a failed save) leaves its session exactly as
it was before it: cache, positions, slot map, recurrent or extension state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from videoqa.worker.errors import NotReady, TurnCancelled, TurnDeadlineExceeded
from videoqa.worker.kvcache.outcome import StoredOutcome
from videoqa.worker.model.chunks import Chunking
from videoqa.worker.model.families import PreparedPrompt
from videoqa.worker.model.generate import Chosen, ModelRunner, answer
from videoqa.worker.pruning.base import PruningMethod
from videoqa.worker.pruning.pipeline import ChunkDone, Prefilled, PrunedPrefill, SessionMedia, StepDone
from videoqa.worker.reduction.base import ReductionMethod
from videoqa.worker.scheduler import YIELD, TurnMeter, Wait
from videoqa.worker.sessions import MediaSegment, Session, SessionManager
from videoqa.worker.telemetry import CacheBuilt, ChunkPrefilled, MediaAppended, Telemetry
from videoqa.worker.types import (
    DecodedMedia,
    Event,
    FinishReason,
    GenerationParams,
    MediaKind,
    ProgressEvent,
    PruningSpec,
    ReductionSpec,
    SamplingSpec,
    SessionEvent,
    Stage,
    StatsEvent,
    Timings,
    TokenEvent,
    TurnStats,
)


@dataclass(frozen=True)
class AnswerText:
    """Sent before an answer's tokens: the tokenizer that turns them into text. The RPC side does
    that (a :class:`~videoqa.worker.model.generate.TextStreamer` per answer), not the compute
    thread; the turn's ``TokenEvent``s carry ids and an empty text."""

    tokenizer: Any


Emit = Callable[[Event | AnswerText], None]
Turn = Generator[Any, Any, Any]


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


@dataclass
class NewSession:
    """Everything the compute thread needs to build a session (validated and preprocessed)."""

    tenant: str
    session_id: str
    model_id: str
    media_kind: MediaKind
    sampling: SamplingSpec
    method: PruningMethod
    generation: GenerationParams
    question: str | None
    media: DecodedMedia
    prompt: PreparedPrompt
    timings: Timings
    #: Drops visual tokens before the language model (``method`` then prunes the KV of the rest).
    reduction: ReductionMethod | None = None


@dataclass
class NewSegment:
    """Media to append to a restored session (decoded and preprocessed)."""

    media_kind: MediaKind
    sampling: SamplingSpec
    media: DecodedMedia
    prompt: PreparedPrompt
    timings: Timings
    #: The session's reduction before the language model, applied to this media too.
    reduction: ReductionMethod | None = None


class TurnRunner:
    """Builds the compute-thread generators of turns (see the module docstring)."""

    def __init__(
        self,
        runners: dict[str, ModelRunner],
        sessions: SessionManager,
        telemetry: Telemetry,
        io: Executor,
        chunking: Chunking,
    ):
        self.runners = runners
        self.sessions = sessions
        self.telemetry = telemetry
        self.counters = telemetry.counters
        self.io = io
        self.chunking = chunking

    # --- a new session -----------------------------------------------------------------------------

    def first_turn(self, plan: NewSession, control: TurnControl, emit: Emit, meter: TurnMeter, started: float) -> Turn:
        runner = self.runners[plan.model_id]
        timings = plan.timings
        timings.queue_s = meter.queue_s
        pruner = PrunedPrefill(
            runner, plan.method, plan.question is not None, chunking=self.chunking, reduction=plan.reduction
        )
        prefilled = yield from self._prefill(pruner.steps(plan.prompt), control, emit, timings, plan.model_id)
        layout, encoded = prefilled.ran(plan.prompt)
        segment = MediaSegment.of(plan.media, plan.media_kind, plan.sampling, layout, encoded_tokens=encoded)
        method = plan.method
        session = Session(
            session_id=plan.session_id,
            tenant=plan.tenant,
            model_id=plan.model_id,
            pruning=PruningSpec(
                method.name, dict(method.values), method.budget, method.max_visual, reduction_spec(plan.reduction)
            ),
            segments=[segment],
            state=prefilled.state,
            visual_tokens_after=prefilled.result.visual_kept,
            recycled_tokens=prefilled.result.recycled,
            kv_bytes_per_token=runner.lm.kv_bytes_per_token,
            awaiting_question=plan.question is None,
        )
        emit(ProgressEvent(Stage.SAVE, 0.0))
        saving = time.perf_counter()
        note = yield Wait(self.io.submit(self._store_new, session, plan.question))
        timings.save_s = time.perf_counter() - saving
        emit(ProgressEvent(Stage.SAVE, 1.0, timings.save_s, note))
        self.telemetry.record(
            CacheBuilt(
                model=plan.model_id,
                method=method.name,
                frames=len(plan.media.indices),
                visual_tokens=layout.num_visual_tokens,
                visual_tokens_kept=prefilled.result.visual_kept,
                visual_tokens_encoded=plan.prompt.layout.num_visual_tokens,
                recycled_tokens=prefilled.result.recycled,
                kv_bytes_full=prefilled.state.unpruned_bytes(runner.lm.kv_bytes_per_token),
                kv_bytes_compressed=prefilled.state.cache_bytes(),
                decode_s=timings.decode_s,
                encode_s=timings.encode_s,
                prefill_s=timings.prefill_s,
                prune_s=timings.prune_s,
            )
        )
        emit(SessionEvent(session.snapshot()))
        if plan.question is not None:
            yield from self._answer(
                session, prefilled.logits, layout.prompt_length, plan.generation, control, emit, meter, timings, started
            )

    def _store_new(self, session: Session, question: str | None) -> str:
        """Store a new session (I/O pool). If the store is unreachable and a question came with the
        upload, the question is still answered (it needs no stored session); the session is not kept."""
        try:
            self.sessions.create(session)
            return ""
        except NotReady:
            if question is None:
                raise
            session.stored = False
            self.counters["sessions_unstored"] += 1
            return "not stored: the session store is unavailable; this answer is the only one"

    def _prefill(
        self,
        steps: Generator[ChunkDone | StepDone, None, Prefilled],
        control: TurnControl,
        emit: Emit,
        timings: Timings,
        model: str,
    ) -> Generator[Any, Any, Prefilled]:
        """Run a chunked prefill, reporting each chunk and letting others run between chunks and
        between the forwards of a chunk."""
        control.check()
        emit(ProgressEvent(Stage.PREFILL, 0.0))
        while True:
            try:
                done = next(steps)
            except StopIteration as finished:
                outcome: Prefilled = finished.value
                break
            if isinstance(done, StepDone):
                yield YIELD
                control.check()
                continue
            timings.prefill_s += done.prefill_s
            timings.prune_s += done.prune_s
            self.telemetry.record(ChunkPrefilled(model, done.prefill_s, done.prune_s))
            if done.index + 1 < done.chunks:
                emit(ProgressEvent(Stage.PREFILL, (done.index + 1) / done.chunks, 0.0, f"chunk {done.index + 1}"))
                yield YIELD
                control.check()
        state = outcome.state
        detail = f"{state.next_pos} tokens, {outcome.chunks} chunks"
        if outcome.reduction is not None:  # its vision tower ran before the chunks (the tower runs inside them else)
            timings.prefill_s += outcome.reduction.seconds
            reduced = outcome.reduction
            detail += f", {reduced.visual_after} of {reduced.visual_before} visual tokens into the language model"
        emit(ProgressEvent(Stage.PREFILL, 1.0, timings.prefill_s, detail))
        emit(ProgressEvent(Stage.PRUNE, 1.0, timings.prune_s, f"{state.cache_length} cache entries"))
        return outcome

    # --- a question on a session --------------------------------------------------------------------

    def follow_up(
        self,
        restoring,
        question: str,
        generation: GenerationParams,
        control: TurnControl,
        emit: Emit,
        meter: TurnMeter,
        started: float,
        stored_as: StoredOutcome | None = None,
        key: str = "",
    ) -> Turn:
        """``restoring``: the future of the session's restore (started before admission).
        ``stored_as``: the outcome to store with the turn under idempotency ``key`` (its tokens
        and stats are filled in here)."""
        session: Session = yield Wait(restoring)
        runner = self.runners[session.model_id]
        control.check()
        state = session.state
        checkpoint = state.checkpoint()
        try:
            ids = runner.turn_input(state, question, first=session.awaiting_question)
            logits = runner.feed(state, ids)
        except BaseException:
            state.rollback(checkpoint)
            raise
        timings = Timings(queue_s=meter.queue_s)
        yield from self._answer(
            session, logits, len(ids), generation, control, emit, meter, timings, started, checkpoint, stored_as, key
        )

    def _answer(
        self,
        session: Session,
        logits,
        prompt_tokens: int,
        params: GenerationParams,
        control: TurnControl,
        emit: Emit,
        meter: TurnMeter,
        timings: Timings,
        started: float,
        checkpoint=None,
        stored_as: StoredOutcome | None = None,
        key: str = "",
    ) -> Turn:
        """Stream an answer; commit the turn only once it is stored (with ``stored_as`` filled in,
        under idempotency ``key``), else roll the session back. Each token but the last is fed
        through the scheduler (batched with other turns' tokens)."""
        runner = self.runners[session.model_id]
        state = session.state
        first = checkpoint is None
        checkpoint = checkpoint or state.checkpoint()
        emit(AnswerText(runner.lm.tokenizer))
        t0 = previous = time.perf_counter()
        count, last, gaps, tokens = 0, None, [], []
        steps = answer(runner.lm, state, logits, params, control.check)
        reply = None
        try:
            while True:
                try:
                    step = steps.send(reply)
                except StopIteration:
                    break
                if isinstance(step, Chosen):
                    now = time.perf_counter()
                    if step.index == 0:
                        timings.ttft_s = now - started
                    else:
                        gaps.append(now - previous)
                    previous, count, last, reply = now, step.index + 1, step.token, None
                    tokens.append(step.token)
                    self.counters["generated_tokens"] += 1
                    emit(TokenEvent("", step.token, step.index))
                else:
                    reply = yield step
            timings.generate_s = time.perf_counter() - t0
            state.cache  # noqa: B018  (takes the K/V back from a batch before another thread reads them)
            awaiting = session.awaiting_question
            session.turns += 1
            session.awaiting_question = False
            finish = FinishReason.STOP if last in runner.eos else FinishReason.LENGTH
            stats = self._stats(session, prompt_tokens, count, finish, timings)
            outcome = None
            if stored_as is not None:
                outcome = StoredOutcome(stored_as.kind, stored_as.request, tuple(tokens), stats)
            saving = time.perf_counter()
            try:
                if session.stored:
                    yield Wait(self.io.submit(self.sessions.save_turn, session, None, key, outcome))
            except BaseException:  # not stored: the session stays at its last saved turn
                session.turns -= 1
                session.awaiting_question = awaiting
                raise
            timings.save_s += time.perf_counter() - saving
        except BaseException as stopped:
            state.rollback(checkpoint)
            # Counted only once the session is back as it was: a reader that waits on the counter
            # must never see the abandoned turn's tokens.
            if isinstance(stopped, TurnCancelled):
                self.counters["turns_cancelled"] += 1
            elif isinstance(stopped, TurnDeadlineExceeded):
                self.counters["turns_deadline_exceeded"] += 1
            raise
        timings.total_s = time.perf_counter() - started
        self.counters["turns_completed"] += 1
        stats.first, stats.token_gaps_s, stats.gpu_peak_bytes = first, gaps, meter.gpu_peak_bytes
        self.telemetry.record(stats)
        emit(StatsEvent(stats))

    @staticmethod
    def _stats(
        session: Session, prompt_tokens: int, generated: int, finish: FinishReason, timings: Timings
    ) -> TurnStats:
        state = session.state
        visual, recycled = session.live_counts()
        return TurnStats(
            session_id=session.session_id,
            model=session.model_id,
            method=session.pruning.method,
            turn=session.turns,
            frames_used=session.frames,
            visual_tokens_before=session.visual_tokens_before,
            visual_tokens_after=visual,
            visual_tokens_encoded=session.visual_tokens_encoded,
            recycled_tokens=recycled,
            kv_bytes_before=state.unpruned_bytes(session.kv_bytes_per_token),
            kv_bytes_after=state.cache_bytes(),
            context_length=state.next_pos,
            cache_length=state.cache_length,
            prompt_tokens=prompt_tokens,
            generated_tokens=generated,
            finish_reason=finish,
            timings=timings,
        )

    # --- media appended to a session -----------------------------------------------------------------

    def append(
        self,
        session: Session,
        method: PruningMethod,
        plan: NewSegment,
        control: TurnControl,
        emit: Emit,
        meter: TurnMeter,
        stored_as: StoredOutcome | None = None,
        key: str = "",
    ) -> Turn:
        """Prefill ``plan``'s media after the conversation so far, compress, store a delta record
        (with ``stored_as`` under idempotency ``key``)."""
        runner = self.runners[session.model_id]
        timings = plan.timings
        timings.queue_s = meter.queue_s
        state = session.state
        checkpoint = state.checkpoint(rewrites=True)
        before = (session.visual_tokens_after, session.recycled_tokens, session.awaiting_question)
        try:
            pruner = PrunedPrefill(runner, method, False, chunking=self.chunking, reduction=plan.reduction)
            media = SessionMedia(frames_before=session.frame_spans, visual_before=session.visual_tokens_before)
            steps = pruner.steps(plan.prompt, state=state, media=media)
            prefilled = yield from self._prefill(steps, control, emit, timings, session.model_id)
            layout, encoded = prefilled.ran(plan.prompt)
            segment = MediaSegment.of(plan.media, plan.media_kind, plan.sampling, layout, session.clock_s, encoded)
            session.visual_tokens_after = prefilled.result.visual_kept
            session.recycled_tokens = prefilled.result.recycled
            session.awaiting_question = True
            state.cache  # noqa: B018  (the K/V are the session's own before another thread reads them)
            emit(ProgressEvent(Stage.SAVE, 0.0))
            saving = time.perf_counter()
            if session.stored:
                yield Wait(self.io.submit(self.sessions.save_turn, session, segment, key, stored_as))
            session.segments.append(segment)
            timings.save_s = time.perf_counter() - saving
        except BaseException:
            state.rollback(checkpoint)
            session.visual_tokens_after, session.recycled_tokens, session.awaiting_question = before
            raise
        emit(ProgressEvent(Stage.SAVE, 1.0, timings.save_s, ""))
        self.counters["media_appended"] += 1
        self.telemetry.record(
            MediaAppended(
                model=session.model_id,
                method=method.name,
                frames=len(plan.media.indices),
                visual_tokens=segment.visual_tokens,
                visual_tokens_encoded=plan.prompt.layout.num_visual_tokens,
                chunks=prefilled.chunks,
                prefill_s=timings.prefill_s,
                prune_s=timings.prune_s,
                kv_bytes_peak=prefilled.peak_kv_bytes,
            )
        )
        emit(SessionEvent(session.snapshot()))


def reduction_spec(reduction: ReductionMethod | None) -> ReductionSpec:
    """The spec a session stores for ``reduction`` (as validated: every parameter's value)."""
    if reduction is None:
        return ReductionSpec()
    return ReductionSpec(reduction.name, dict(reduction.values), reduction.retention)
