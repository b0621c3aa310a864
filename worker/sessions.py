"""Sessions held by a worker: in memory, per tenant, with an idle TTL and a capacity cap.

This is the single-process store. The durable Redis store implements the same calls.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from videoqa.worker.errors import LimitExceeded, SessionNotFound
from videoqa.worker.model.families import TokenLayout
from videoqa.worker.model.generate import ConversationState
from videoqa.worker.types import DecodedMedia, MediaKind, PruningSpec, SamplingSpec, SessionSnapshot


@dataclass
class Session:
    """One video conversation: its compressed cache plus what is needed to continue it."""

    session_id: str
    tenant: str
    model_id: str
    media_kind: MediaKind
    sampling: SamplingSpec
    pruning: PruningSpec
    media: DecodedMedia
    layout: TokenLayout
    state: ConversationState
    visual_tokens_after: int
    recycled_tokens: int
    kv_bytes_per_token: int
    #: Completed question/answer turns.
    turns: int = 0
    created_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    #: Extra per-method state the pruning engine may attach.
    extra: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> SessionSnapshot:
        frames = self.media.frames
        return SessionSnapshot(
            session_id=self.session_id,
            model=self.model_id,
            media_kind=self.media_kind,
            sampling=self.sampling,
            frame_indices=list(self.media.indices),
            frame_timestamps=list(self.media.timestamps),
            frame_width=int(frames.shape[2]) if frames.ndim == 4 else 0,
            frame_height=int(frames.shape[1]) if frames.ndim == 4 else 0,
            source_frames=self.media.source_frames,
            source_fps=self.media.source_fps,
            source_duration_s=self.media.duration_s,
            pruning=self.pruning,
            turns=self.turns,
            context_length=self.state.next_pos,
            cache_length=self.state.cache_length,
            visual_tokens_before=self.layout.num_visual_tokens,
            visual_tokens_after=self.visual_tokens_after,
            kv_bytes=self.state.cache_bytes(),
            created_at=self.created_at,
            last_used_at=self.last_used_at,
        )


class InMemorySessionStore:
    """Thread-safe map of live sessions. A session of another tenant is reported as not found."""

    def __init__(self, max_sessions: int, ttl_s: float, clock=time.time):
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def get(self, tenant: str, session_id: str) -> Session:
        with self._lock:
            self._expire_locked()
            session = self._sessions.get(session_id)
            if session is None or session.tenant != tenant:
                raise SessionNotFound(f"session {session_id!r} not found (unknown, expired or deleted)")
            session.last_used_at = self._clock()
            return session

    def put(self, session: Session) -> None:
        with self._lock:
            self._expire_locked()
            if session.session_id not in self._sessions and len(self._sessions) >= self.max_sessions:
                raise LimitExceeded(
                    f"this worker holds its maximum of {self.max_sessions} sessions; delete some or retry later",
                    retry_after_s=30.0,
                )
            session.last_used_at = self._clock()
            self._sessions[session.session_id] = session

    def reserve_check(self) -> None:
        """Fail early (before decoding) when no room is left for a new session."""
        with self._lock:
            self._expire_locked()
            if len(self._sessions) >= self.max_sessions:
                raise LimitExceeded(
                    f"this worker holds its maximum of {self.max_sessions} sessions; delete some or retry later",
                    retry_after_s=30.0,
                )

    def delete(self, tenant: str, session_id: str) -> None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.tenant != tenant:
                raise SessionNotFound(f"session {session_id!r} not found (unknown, expired or deleted)")
            del self._sessions[session_id]

    def _expire_locked(self) -> None:
        cutoff = self._clock() - self.ttl_s
        for key in [k for k, s in self._sessions.items() if s.last_used_at < cutoff]:
            del self._sessions[key]
