"""A worker's sessions: the live objects, and the manager that stores and restores them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from videoqa.worker.errors import (
    CorruptSession,
    IncompatibleSession,
    NotReady,
    SessionForbidden,
    SessionNotFound,
    TurnDeadlineExceeded,
)
from videoqa.worker.kvcache.manifest import Manifest, Owner
from videoqa.worker.kvcache.outcome import StoredOutcome
from videoqa.worker.model.families import TokenLayout
from videoqa.worker.model.state import ConversationState, VisualSlots
from videoqa.worker.telemetry import StoreFailure, Telemetry
from videoqa.worker.types import DecodedMedia, MediaKind, PruningSpec, SamplingSpec, SessionSnapshot


@dataclass(frozen=True)
class MediaSegment:
    """One piece of a session's media: the upload that created the session, or a segment appended
    later. Its ``timestamps`` are on the session's clock: an appended segment's times continue
    where the media before it ended (``start_s``)."""

    kind: MediaKind
    sampling: SamplingSpec
    frame_indices: tuple[int, ...]
    timestamps: tuple[float, ...]
    width: int
    height: int
    source_frames: int
    source_fps: float
    duration_s: float
    #: Where this segment starts on the session's clock, in seconds.
    start_s: float
    #: Visual tokens of it the language model saw, and the frame spans (temporal patches or frames)
    #: they form.
    visual_tokens: int
    spans: int
    #: Visual tokens the vision tower made of it, before a reduction before the language model
    #: (0: no reduction, as many as ``visual_tokens``).
    encoded_tokens: int = 0

    @classmethod
    def of(
        cls,
        media: DecodedMedia,
        kind: MediaKind,
        sampling: SamplingSpec,
        layout: TokenLayout,
        start_s: float = 0.0,
        encoded_tokens: int = 0,
    ) -> MediaSegment:
        """``layout``: the prompt the language model ran (after a reduction); ``encoded_tokens``:
        the visual tokens before the reduction (0: none)."""
        frames = media.frames
        return cls(
            kind=kind,
            sampling=sampling,
            frame_indices=tuple(int(i) for i in media.indices),
            timestamps=tuple(start_s + float(t) for t in media.timestamps),
            width=int(frames.shape[2]) if frames.ndim == 4 else 0,
            height=int(frames.shape[1]) if frames.ndim == 4 else 0,
            source_frames=int(media.source_frames),
            source_fps=float(media.source_fps),
            duration_s=float(media.duration_s),
            start_s=start_s,
            visual_tokens=layout.num_visual_tokens,
            spans=len(layout.frame_spans),
            encoded_tokens=encoded_tokens,
        )

    @property
    def end_s(self) -> float:
        """Where the next segment starts: after this one's duration (or its last frame, if later)."""
        last = self.timestamps[-1] if self.timestamps else self.start_s
        return max(self.start_s + self.duration_s, last)


@dataclass(frozen=True)
class SavePoint:
    """The session as last stored: each layer's cache length and the tokens fed (a delta record
    holds what came after)."""

    lengths: tuple[int, ...] = ()
    tokens: int = 0


@dataclass(frozen=True)
class Progress:
    """How far a session has got, as ``GetSession`` reports it."""

    turns: int
    context_length: int
    cache_length: int
    visual_tokens_after: int
    kv_bytes: int


@dataclass
class Session:
    """One video conversation: its compressed cache plus what is needed to continue it."""

    session_id: str
    tenant: str
    model_id: str
    pruning: PruningSpec
    segments: list[MediaSegment]
    state: ConversationState
    visual_tokens_after: int
    recycled_tokens: int
    kv_bytes_per_token: int
    #: Completed question/answer turns.
    turns: int = 0
    #: Delta records stored after the prefix (turns and appended segments): the manifest's version.
    records: int = 0
    #: The prompt ends with media and no question yet (the next question opens no new user turn).
    awaiting_question: bool = False
    #: False when the store was unreachable at creation: the session lives for its one call only.
    stored: bool = True
    created_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    #: Where the next delta record starts.
    saved: SavePoint = field(default_factory=SavePoint)
    #: Progress at the last save, as the snapshot reports it: a turn in flight on the compute
    #: thread grows the live cache, and readers must not see half a turn.
    committed: Progress | None = None

    @property
    def media_kind(self) -> MediaKind:
        return self.segments[0].kind

    @property
    def sampling(self) -> SamplingSpec:
        return self.segments[0].sampling

    @property
    def visual_tokens_before(self) -> int:
        """Visual tokens the model made of all the session's media."""
        return sum(segment.visual_tokens for segment in self.segments)

    @property
    def visual_tokens_encoded(self) -> int:
        """Visual tokens the vision tower made of all the session's media, before any reduction."""
        return sum(segment.encoded_tokens or segment.visual_tokens for segment in self.segments)

    @property
    def frame_spans(self) -> int:
        """Frame spans (temporal patches or frames) of all the session's media."""
        return sum(segment.spans for segment in self.segments)

    @property
    def frames(self) -> int:
        return sum(len(segment.frame_indices) for segment in self.segments)

    @property
    def clock_s(self) -> float:
        """Where media appended now starts on the session's clock."""
        return self.segments[-1].end_s if self.segments else 0.0

    def mark_saved(self) -> None:
        state = self.state
        self.saved = SavePoint(tuple(state.cache_lengths), len(state.token_ids))
        if state.extension is not None:
            state.extension.mark_saved()
        if state.slots is not None:
            lengths = state.cache_lengths
            state.slots = VisualSlots([state.slots.layer(i, n).stored() for i, n in enumerate(lengths)])
        self.committed = self._progress()

    def _progress(self) -> Progress:
        """How far the conversation has got: turns and the cache's sizes, live."""
        return Progress(
            turns=self.turns,
            context_length=self.state.next_pos,
            cache_length=self.state.cache_length,
            visual_tokens_after=self.live_counts()[0],
            kv_bytes=self.state.cache_bytes(),
        )

    def live_counts(self) -> tuple[int, int]:
        """(visual entries in the cache, recycled entries) now: the prefill's, unless the method's
        cache extension moves entries while decoding (``hae``: its recycle bin's size)."""
        counts = self.state.extension.counts() if self.state.extension is not None else None
        return counts if counts is not None else (self.visual_tokens_after, self.recycled_tokens)

    def snapshot(self) -> SessionSnapshot:
        first = self.segments[0]
        progress = self.committed or self._progress()
        return SessionSnapshot(
            session_id=self.session_id,
            model=self.model_id,
            media_kind=self.media_kind,
            sampling=self.sampling,
            frame_indices=[i for segment in self.segments for i in segment.frame_indices],
            frame_timestamps=[t for segment in self.segments for t in segment.timestamps],
            frame_width=first.width,
            frame_height=first.height,
            source_frames=sum(segment.source_frames for segment in self.segments),
            source_fps=first.source_fps,
            source_duration_s=self.clock_s,
            pruning=self.pruning,
            visual_tokens_before=self.visual_tokens_before,
            visual_tokens_encoded=self.visual_tokens_encoded,
            turns=progress.turns,
            context_length=progress.context_length,
            cache_length=progress.cache_length,
            visual_tokens_after=progress.visual_tokens_after,
            kv_bytes=progress.kv_bytes,
            created_at=self.created_at,
            last_used_at=self.last_used_at,
            segments=len(self.segments),
        )


class SessionManager:
    """Live sessions (the hot tier) in front of a :class:`SessionStore` of encoded records.

    The hot tier is an LRU bounded in bytes; a hot copy is used only while its turn count equals
    the stored manifest's version, so a turn written by another worker invalidates it. Every
    lookup outcome is counted in ``counters`` (``lookup_hot``, ``lookup_store``, ``lookup_missing``,
    ``lookup_expired``, ``lookup_corrupt``, ``lookup_incompatible``, ``store_unavailable``), as are
    ``sessions_created``, ``sessions_deleted`` and ``hot_evicted``; store operations and record
    encoding are timed into ``telemetry``.
    """

    def __init__(
        self,
        store,
        *,
        models: dict,
        hot_bytes: int,
        quantize: str = "none",
        lease_s: float = 60.0,
        telemetry: Telemetry | None = None,
    ):
        self.store = store
        self.models = models
        self.hot_bytes = hot_bytes
        self.quantize = quantize
        self.lease_s = lease_s
        self.telemetry = telemetry or Telemetry()
        self.counters = self.telemetry.counters
        self.backend: str = getattr(store, "backend", type(store).__name__)
        self._hot: OrderedDict[str, Session] = OrderedDict()
        self._hot_sizes: dict[str, int] = {}  # KV bytes of each hot session when last remembered
        self._hot_total = 0
        self._lock = threading.Lock()
        #: Turns waiting for each session in this worker (on the event loop).
        self._queues: dict[str, _TurnQueue] = {}

    # --- hot tier --------------------------------------------------------------------------------

    def _remember(self, session: Session) -> None:
        size = session.state.cache_bytes()
        with self._lock:
            self._hot_total += size - self._hot_sizes.get(session.session_id, 0)
            self._hot[session.session_id], self._hot_sizes[session.session_id] = session, size
            self._hot.move_to_end(session.session_id)
            while self._hot_total > self.hot_bytes and len(self._hot) > 1:
                evicted, _ = self._hot.popitem(last=False)
                self._hot_total -= self._hot_sizes.pop(evicted)
                self.counters["hot_evicted"] += 1

    def _forget(self, session_id: str) -> None:
        with self._lock:
            self._hot.pop(session_id, None)
            self._hot_total -= self._hot_sizes.pop(session_id, 0)

    @property
    def hot_sessions(self) -> int:
        return len(self._hot)

    @property
    def hot_bytes_used(self) -> int:
        return self._hot_total

    def estimate_bytes(self, session_id: str) -> int:
        """KV bytes of a session, cheaply: its hot copy's, else its stored size (0 if unknown)."""
        with self._lock:
            if session_id in self._hot_sizes:
                return self._hot_sizes[session_id]
        try:
            manifest = self.store.manifest(session_id)
        except Exception:  # unreachable or damaged: the lookup of the turn itself will say so
            return 0
        return manifest.size if manifest else 0

    # --- operations ------------------------------------------------------------------------------

    def _counted(self, op: str, fn, *args):
        """Run one store operation ``op``, timed; an unreachable store is counted."""
        try:
            with self.telemetry.timed("store", backend=self.backend, op=op):
                return fn(*args)
        except NotReady:
            self.counters["store_unavailable"] += 1
            self.telemetry.record(StoreFailure(self.backend, op))
            raise

    def create(self, session: Session) -> None:
        """Store a new session's prefix and keep it hot."""
        from videoqa.worker.kvcache.records import encode_prefix

        lm = self.models[session.model_id]
        with self.telemetry.timed("serialize", op="encode"):
            blob = encode_prefix(session, lm.revision, str(lm.dtype).removeprefix("torch."), self.quantize)
        self.telemetry.size("record_bytes", len(blob), kind="prefix")
        owner = Owner(session.tenant, session.model_id, lm.revision, session.created_at)
        self._counted("create", self.store.create, session.session_id, owner, blob)
        self.counters["sessions_created"] += 1
        session.mark_saved()
        self._remember(session)

    def save_turn(
        self,
        session: Session,
        segment: MediaSegment | None = None,
        key: str = "",
        outcome: StoredOutcome | None = None,
    ) -> None:
        """Store what changed since the last save (the turn just completed, or ``segment`` just
        appended) as one more delta record, with the call's idempotency ``key`` and ``outcome``;
        compare-and-set on the record count. A session found damaged is discarded (DATA_LOSS)."""
        from videoqa.worker.kvcache.records import encode_delta

        with self.telemetry.timed("serialize", op="encode"):
            blob = encode_delta(session, self.quantize, segment)
        kind = "turn" if segment is None else "segment"
        self.telemetry.size("record_bytes", len(blob), kind=kind)
        stored = outcome.to_json() if outcome is not None else ""
        with self._classified(session.session_id):
            self._counted("append", self.store.append, session.session_id, session.records, blob, key, stored)
        session.records += 1
        session.mark_saved()
        session.last_used_at = time.time()
        self._remember(session)

    def get(self, tenant: str, session_id: str) -> Session:
        """The session, from the hot tier when current, else restored from the store."""
        from videoqa.worker.kvcache.records import restore

        manifest = self._owned_manifest(tenant, session_id)
        model_id, revision = manifest.owner.model_id, manifest.owner.revision
        if model_id not in self.models or self.models[model_id].revision != revision:
            self.counters["lookup_incompatible"] += 1
            raise IncompatibleSession(
                f"session was built by {model_id} (revision {revision}), which this worker does not serve"
            )
        with self._lock:
            hot = self._hot.get(session_id)
        if hot is not None and hot.records == manifest.version:
            with self._classified(session_id):  # what the next turn builds on is still stored
                self._counted("verify", self.store.verify, manifest)
            self.counters["lookup_hot"] += 1
            hot.last_used_at = time.time()
            self._remember(hot)
            return hot
        lm = self.models[model_id]
        with self._classified(session_id):
            stored = self._counted("load", self.store.load, session_id)
            with self.telemetry.timed("serialize", op="decode"):
                session = restore(
                    stored.prefix,
                    stored.turns,
                    model_id=model_id,
                    revision=lm.revision,
                    device=lm.device,
                    dtype=lm.dtype,
                )
        if session.tenant != tenant:
            raise SessionForbidden(f"session {session_id!r} belongs to another tenant")
        self.counters["lookup_store"] += 1
        self._remember(session)
        return session

    def stored_outcome(self, tenant: str, session_id: str, key: str, request: str) -> StoredOutcome | None:
        """What the call with idempotency ``key`` stored on this session, if it stored a turn
        (``request``: the digest of the retried call, which must be the same request)."""
        from videoqa.worker.errors import InvalidInput

        if not key:
            return None  # nothing to look up: the turn runs
        meta = self._owned_manifest(tenant, session_id).stored_by(key)
        if meta is None:
            return None
        with self._classified(session_id):
            outcome = StoredOutcome.from_json(meta.outcome)
        if outcome.request != request:
            raise InvalidInput(
                "this idempotency key was used for a different request on this session; use a new key per call",
                field="idempotency_key",
            )
        self.counters["turns_replayed"] += 1
        return outcome

    def _owned_manifest(self, tenant: str, session_id: str) -> Manifest:
        """The session's manifest, if it exists and ``tenant`` owns it (else NOT_FOUND or
        PERMISSION_DENIED, counted as a lookup)."""
        manifest = self._manifest(session_id)
        if manifest is None:
            expired = getattr(self.store, "was_expired", lambda _: False)(session_id)
            self.counters["lookup_expired" if expired else "lookup_missing"] += 1
            raise SessionNotFound(f"session {session_id!r} not found (unknown, expired or deleted)")
        if manifest.owner.tenant != tenant:
            self.counters["lookup_forbidden"] += 1
            raise SessionForbidden(f"session {session_id!r} belongs to another tenant")
        return manifest

    def _manifest(self, session_id: str) -> Manifest | None:
        with self._classified(session_id):
            return self._counted("manifest", self.store.manifest, session_id)

    @contextlib.contextmanager
    def _classified(self, session_id: str):
        """Damaged sessions are discarded (DATA_LOSS once); incompatible ones are counted."""
        try:
            yield
        except CorruptSession:
            self._discard(session_id)
            raise
        except IncompatibleSession:
            self.counters["lookup_incompatible"] += 1
            raise

    def _discard(self, session_id: str) -> None:
        """A damaged session is removed so it can never answer (DATA_LOSS is reported once)."""
        self.counters["lookup_corrupt"] += 1
        self._forget(session_id)
        with contextlib.suppress(NotReady):  # unreachable now: the next lookup finds the damage again
            self.store.delete(session_id)

    def delete(self, tenant: str, session_id: str) -> None:
        """Delete the session: its owner may, whatever its format version or damage (a manifest
        too damaged to name its owner can be deleted by anyone: it can answer no one)."""
        exists, owner = self._counted("manifest", self.store.owner, session_id)
        if not exists:
            self.counters["lookup_missing"] += 1
            raise SessionNotFound(f"session {session_id!r} not found (unknown, expired or deleted)")
        if owner is not None and owner != tenant:
            self.counters["lookup_forbidden"] += 1
            raise SessionForbidden(f"session {session_id!r} belongs to another tenant")
        self._forget(session_id)
        self._counted("delete", self.store.delete, session_id)
        self.counters["sessions_deleted"] += 1

    def reserve_check(self) -> None:
        """Fail before decoding when an in-process store is full."""
        check = getattr(self.store, "reserve_check", None)
        if check is not None:
            check()

    async def lease(self, session_id: str, deadline: float | None) -> Lease:
        """Acquire the session's turn lock: first in this worker's queue for the session (turns
        run in arrival order), then the store's lease that serializes turns across workers
        (polled, with backoff: contended only when two workers serve one session). Waiting
        respects ``deadline`` (monotonic). The lease is renewed in the background until released."""
        queue = self._queues.get(session_id) or self._queues.setdefault(session_id, _TurnQueue())
        queue.users += 1
        loop = asyncio.get_running_loop()
        token = None
        try:
            async with asyncio.timeout_at(None if deadline is None else loop.time() + deadline - time.monotonic()):
                await queue.lock.acquire()
                try:
                    pause = 0.01
                    while token is None:
                        token = await asyncio.to_thread(
                            self._counted, "acquire", self.store.acquire, session_id, self.lease_s
                        )
                        if token is None:
                            await asyncio.sleep(pause)
                            pause = min(0.25, pause * 2)
                except BaseException:
                    queue.lock.release()
                    raise
        except TimeoutError:
            self._leave(session_id, queue)
            raise TurnDeadlineExceeded("the deadline passed while other turns of this session were running") from None
        except BaseException:
            self._leave(session_id, queue)
            raise

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease_s / 3)
                with contextlib.suppress(NotReady):
                    await asyncio.to_thread(self.store.renew, session_id, token, self.lease_s)

        def done() -> None:  # on the event loop, after the store's lease is released
            queue.lock.release()
            self._leave(session_id, queue)

        return Lease(self.store, session_id, token, loop, asyncio.create_task(renew()), done)

    def _leave(self, session_id: str, queue: _TurnQueue) -> None:
        queue.users -= 1
        if queue.users == 0 and self._queues.get(session_id) is queue:
            del self._queues[session_id]


@dataclass
class _TurnQueue:
    """The turns of one session waiting in this worker, in arrival order (``asyncio.Lock`` wakes
    its waiters first come, first served), and how many hold or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Lease:
    """A held turn lock. ``release()`` is idempotent and may be called from any thread: the compute
    thread releases it as soon as its turn ends (even if the RPC's generator is finalized later)."""

    def __init__(self, store, session_id: str, token: str, loop, renewer, done):
        self._store, self._session_id, self._token = store, session_id, token
        self._loop, self._renewer, self._done = loop, renewer, done
        self._released = False
        self._guard = threading.Lock()

    def release(self) -> None:
        with self._guard:
            if self._released:
                return
            self._released = True
        with contextlib.suppress(RuntimeError):  # the loop may be closed at shutdown
            self._loop.call_soon_threadsafe(self._renewer.cancel)
        try:
            with contextlib.suppress(NotReady):  # if Redis is down, the lease expires by itself
                self._store.release(self._session_id, self._token)
        finally:
            with contextlib.suppress(RuntimeError):  # the next turn in this worker's queue may go
                self._loop.call_soon_threadsafe(self._done)
