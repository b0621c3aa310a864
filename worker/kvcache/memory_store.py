"""The session store in this process's memory (the single-process default): the interface of
``store.RedisStore``, without durability or sharing between workers."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict

from videoqa.worker.errors import CorruptSession, LimitExceeded
from videoqa.worker.kvcache.manifest import Manifest, Owner, assemble, owner_tenant, split_record
from videoqa.worker.kvcache.store import StoredSession, StoreLimits, not_found, version_conflict


class InProcessStore(StoreLimits):
    """Sessions do not survive a restart and are not shared between workers."""

    backend = "memory"
    #: How many expired session ids are remembered, so that a lookup can say "expired".
    REMEMBERED_EXPIRIES = 10_000

    def __init__(
        self,
        *,
        ttl_s: float,
        max_session_bytes: int,
        max_sessions: int,
        chunk_bytes: int = 8 << 20,
        clock=time.monotonic,
    ):
        super().__init__(ttl_s, max_session_bytes, chunk_bytes)
        self.max_sessions = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        self._manifests: dict[str, tuple[float, str]] = {}
        self._blobs: dict[tuple[str, str], bytes] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        #: Sessions dropped because their time to live ran out.
        self.expired_total = 0

    def _live(self, session_id: str) -> Manifest | None:
        entry = self._manifests.get(session_id)
        if entry is None:
            return None
        if entry[0] < self._clock():
            self._expire(session_id)
            return None
        return Manifest.from_json(entry[1])

    def _put(self, manifest: Manifest) -> None:
        self._manifests[manifest.session_id] = (self._clock() + self.ttl_s, manifest.to_json())

    def _expire(self, session_id: str) -> None:
        self._drop(session_id)
        self.expired_total += 1
        self._expired[session_id] = None
        while len(self._expired) > self.REMEMBERED_EXPIRIES:
            self._expired.popitem(last=False)

    def session_count(self) -> int:
        with self._lock:
            self._expire_all()
            return len(self._manifests)

    def was_expired(self, session_id: str) -> bool:
        """Whether ``session_id`` existed and ran out of time (remembered for the last expiries)."""
        with self._lock:
            return session_id in self._expired

    def _drop(self, session_id: str) -> None:
        self._manifests.pop(session_id, None)
        for key in [k for k in self._blobs if k[0] == session_id]:
            del self._blobs[key]

    def _expire_all(self) -> None:
        now = self._clock()
        for session_id in [s for s, (expiry, _) in self._manifests.items() if expiry < now]:
            self._expire(session_id)

    def reserve_check(self) -> None:
        """Refuse early (before decoding) when the process holds its maximum of sessions."""
        with self._lock:
            self._check_capacity_locked()

    def _check_capacity_locked(self) -> None:
        self._expire_all()
        if len(self._manifests) >= self.max_sessions:
            raise LimitExceeded(
                f"this worker holds its maximum of {self.max_sessions} sessions; retry later", retry_after_s=30.0
            )

    def create(self, session_id: str, owner: Owner, prefix: bytes) -> None:
        self.check_size(len(prefix))
        with self._lock:
            self._check_capacity_locked()
            meta, _ = split_record(prefix, self.chunk_bytes)
            self._blobs[(session_id, meta.id)] = prefix
            self._put(Manifest.new(session_id, owner, meta))

    def append(self, session_id: str, expected_version: int, turn: bytes, key: str = "", outcome: str = "") -> None:
        with self._lock:
            manifest = self._live(session_id)
            if manifest is None:
                raise not_found(session_id)
            if manifest.version != expected_version:
                raise version_conflict()
            self.check_size(manifest.size + len(turn))
            self._check_records(manifest)
            meta, _ = split_record(turn, self.chunk_bytes, key, outcome)
            self._blobs[(session_id, meta.id)] = turn
            self._put(manifest.appended(meta))

    def _check_records(self, manifest: Manifest) -> None:
        for meta in manifest.records:
            blob = self._blobs.get((manifest.session_id, meta.id))
            if blob is None or len(blob) != meta.size:
                raise CorruptSession(
                    "a stored record of this session is missing or truncated; the session is discarded"
                )

    def manifest(self, session_id: str) -> Manifest | None:
        with self._lock:
            return self._live(session_id)

    def verify(self, manifest: Manifest) -> None:
        with self._lock:
            self._check_records(manifest)

    def load(self, session_id: str) -> StoredSession:
        with self._lock:
            manifest = self._live(session_id)
            if manifest is None:
                raise not_found(session_id)
            blobs = [assemble(m, [self._blobs.get((session_id, m.id))]) for m in manifest.records]
            self._manifests[session_id] = (self._clock() + self.ttl_s, self._manifests[session_id][1])
            return StoredSession(manifest, blobs[0], blobs[1:])

    def owner(self, session_id: str) -> tuple[bool, str | None]:
        with self._lock:
            entry = self._manifests.get(session_id)
            return (False, None) if entry is None else (True, owner_tenant(entry[1]))

    def delete(self, session_id: str) -> bool:
        with self._lock:
            existed = session_id in self._manifests and self._manifests[session_id][0] >= self._clock()
            self._drop(session_id)
            self._locks.pop(session_id, None)
            return existed

    def acquire(self, session_id: str, lease_s: float) -> str | None:
        with self._lock:
            held = self._locks.get(session_id)
            if held is not None and held[1] > self._clock():
                return None
            token = uuid.uuid4().hex
            self._locks[session_id] = (token, self._clock() + lease_s)
            return token

    def renew(self, session_id: str, token: str, lease_s: float) -> bool:
        with self._lock:
            held = self._locks.get(session_id)
            if held is None or held[0] != token:
                return False
            self._locks[session_id] = (token, self._clock() + lease_s)
            return True

    def release(self, session_id: str, token: str) -> None:
        with self._lock:
            if self._locks.get(session_id, ("", 0))[0] == token:
                del self._locks[session_id]
