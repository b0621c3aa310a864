"""Bytes ↔ storage for sessions. No tensors: records are opaque, checksummed blobs.

A session is a *manifest* (JSON: owner, model and revision, version = completed turns, and the
records) plus its records (the prefix, then one per turn), each split into chunks. Writers put the
chunks first and the manifest last, atomically, so a reader never sees a half-written session;
a turn is appended by compare-and-set on the manifest's version. Every use slides the TTL of all
keys; a size cap bounds a session; delete removes every key (and SCANs for strays). Turns on one
session are serialized across workers by a lease lock.

``RedisStore`` keys are namespaced by format version: ``videoqa:v1:s:{session_id}:…``.
``InProcessStore`` is the single-process default behind the same interface.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from videoqa.worker.errors import CorruptSession, IncompatibleSession, LimitExceeded, NotReady, SessionNotFound
from videoqa.worker.kvcache.serde import FORMAT_VERSION


@dataclass
class StoredSession:
    manifest: dict[str, Any]
    prefix: bytes
    turns: list[bytes]


class VersionConflict(NotReady):
    """Another writer appended a turn first; the caller retries from the stored state."""


class SessionStore(Protocol):
    def create(self, session_id: str, owner: dict[str, Any], prefix: bytes) -> None: ...
    def append(self, session_id: str, expected_version: int, turn: bytes) -> None: ...
    def manifest(self, session_id: str) -> dict[str, Any] | None: ...
    def load(self, session_id: str) -> StoredSession: ...
    def delete(self, session_id: str) -> bool: ...
    def acquire(self, session_id: str, lease_s: float) -> str | None: ...
    def renew(self, session_id: str, token: str, lease_s: float) -> bool: ...
    def release(self, session_id: str, token: str) -> None: ...


def _record(blob: bytes, chunk_bytes: int) -> tuple[dict[str, Any], list[bytes]]:
    chunks = [blob[i : i + chunk_bytes] for i in range(0, len(blob), chunk_bytes)] or [b""]
    digest = hashlib.sha256(blob).hexdigest()
    meta = {"id": uuid.uuid4().hex, "chunks": len(chunks), "size": len(blob), "sha256": digest}
    return meta, chunks


def _new_manifest(session_id: str, owner: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a session whose only record is its prefix (version 0)."""
    return {
        **owner,
        "format_version": FORMAT_VERSION,
        "session_id": session_id,
        "version": 0,
        "size": meta["size"],
        "records": [meta],
    }


def _appended(manifest: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest after one more turn record."""
    return {
        **manifest,
        "version": manifest["version"] + 1,
        "size": manifest["size"] + meta["size"],
        "records": [*manifest["records"], meta],
    }


def _assemble(meta: dict[str, Any], chunks: list[bytes | None]) -> bytes:
    if any(chunk is None for chunk in chunks):
        raise CorruptSession("a chunk of the stored session is missing")
    blob = b"".join(chunks)  # type: ignore[arg-type]
    if len(blob) != meta["size"] or hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise CorruptSession("a chunk of the stored session is damaged or truncated")
    return blob


def _check_manifest(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError as error:
        raise CorruptSession("the stored session's manifest is unreadable") from error
    if not isinstance(manifest, dict) or "records" not in manifest or "version" not in manifest:
        raise CorruptSession("the stored session's manifest is malformed")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IncompatibleSession(
            f"stored session has format version {manifest.get('format_version')}; this server reads {FORMAT_VERSION}"
        )
    return manifest


class _Limits:
    def __init__(self, ttl_s: float, max_session_bytes: int, chunk_bytes: int):
        self.ttl_s, self.max_session_bytes, self.chunk_bytes = ttl_s, max_session_bytes, chunk_bytes

    def check_size(self, total: int) -> None:
        if total > self.max_session_bytes:
            raise LimitExceeded(
                f"the session would take {total} bytes; the limit per session is {self.max_session_bytes}"
            )


class RedisStore(_Limits):
    """Sessions in Redis (redis-py), chunked, with manifests written last."""

    backend = "redis"

    _APPEND = """
    local raw = redis.call('GET', KEYS[1])
    if not raw then return -1 end
    if cjson.decode(raw)['version'] ~= tonumber(ARGV[1]) then return -2 end
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
    """
    _RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
    _RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        max_session_bytes: int,
        chunk_bytes: int = 8 << 20,
        username: str | None = None,
        password: str | None = None,
        ca_certs: str | None = None,
        timeout_s: float = 5.0,
    ):
        import redis

        super().__init__(ttl_s, max_session_bytes, chunk_bytes)
        kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if username:
            kwargs["username"] = username
        if password:
            kwargs["password"] = password
        if ca_certs:
            kwargs["ssl_ca_certs"] = ca_certs
        self.client = redis.Redis.from_url(url, **kwargs)
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._append = self.client.register_script(self._APPEND)
        self._release = self.client.register_script(self._RELEASE)
        self._renew = self.client.register_script(self._RENEW)

    # --- keys ------------------------------------------------------------------------------------

    @staticmethod
    def base(session_id: str) -> str:
        return f"videoqa:v{FORMAT_VERSION}:s:{session_id}"

    def _manifest_key(self, session_id: str) -> str:
        return f"{self.base(session_id)}:manifest"

    def _chunk_keys(self, session_id: str, meta: dict[str, Any]) -> list[str]:
        return [f"{self.base(session_id)}:r:{meta['id']}:{i}" for i in range(meta["chunks"])]

    def _ms(self, extra_s: float = 0.0) -> int:
        return int((self.ttl_s + extra_s) * 1000)

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self._errors as error:
            raise NotReady("the session store (Redis) is unreachable; retry shortly", retry_after_s=2.0) from error

    def session_count(self) -> int:
        """Stored sessions (a SCAN over the manifests: call it rarely)."""
        pattern = f"{self.base('*')}:manifest"
        return self._call(lambda: sum(1 for _ in self.client.scan_iter(match=pattern, count=1000)))

    def was_expired(self, session_id: str) -> bool:
        """Redis drops expired keys itself: an expired session looks unknown."""
        return False

    # --- writes ----------------------------------------------------------------------------------

    def _write_chunks(self, session_id: str, meta: dict[str, Any], chunks: list[bytes]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, chunk in zip(self._chunk_keys(session_id, meta), chunks, strict=True):
            pipe.set(key, chunk, px=self._ms(60))  # chunks outlive their manifest, never the reverse
        pipe.execute()

    def create(self, session_id: str, owner: dict[str, Any], prefix: bytes) -> None:
        self.check_size(len(prefix))
        meta, chunks = _record(prefix, self.chunk_bytes)
        manifest = _new_manifest(session_id, owner, meta)

        def run() -> None:
            self._write_chunks(session_id, meta, chunks)
            if not self.client.set(self._manifest_key(session_id), json.dumps(manifest), px=self._ms(), nx=True):
                self.client.delete(*self._chunk_keys(session_id, meta))
                raise CorruptSession(f"session id {session_id} already exists")

        self._call(run)

    def append(self, session_id: str, expected_version: int, turn: bytes) -> None:
        def run() -> None:
            manifest = _check_manifest(self.client.get(self._manifest_key(session_id)))
            if manifest is None:
                raise SessionNotFound(f"session {session_id!r} not found (unknown, expired or deleted)")
            if manifest["version"] != expected_version:  # the new manifest is built from this one
                raise VersionConflict("another turn of this session was saved first; retry", retry_after_s=0.1)
            self.check_size(manifest["size"] + len(turn))
            meta, chunks = _record(turn, self.chunk_bytes)
            self._write_chunks(session_id, meta, chunks)
            updated = _appended(manifest, meta)
            result = self._append(
                keys=[self._manifest_key(session_id)], args=[expected_version, json.dumps(updated), self._ms()]
            )
            if result != 1:
                self.client.delete(*self._chunk_keys(session_id, meta))
                if result == -1:
                    raise SessionNotFound(f"session {session_id!r} expired while its turn ran")
                raise VersionConflict("another turn of this session was saved first; retry", retry_after_s=0.1)
            self._touch(session_id, updated)

        self._call(run)

    def _touch(self, session_id: str, manifest: dict[str, Any]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.pexpire(self._manifest_key(session_id), self._ms())
        for meta in manifest["records"]:
            for key in self._chunk_keys(session_id, meta):
                pipe.pexpire(key, self._ms(60))
        pipe.execute()

    # --- reads -----------------------------------------------------------------------------------

    def manifest(self, session_id: str) -> dict[str, Any] | None:
        return self._call(lambda: _check_manifest(self.client.get(self._manifest_key(session_id))))

    def load(self, session_id: str) -> StoredSession:
        def run() -> StoredSession:
            manifest = _check_manifest(self.client.get(self._manifest_key(session_id)))
            if manifest is None:
                raise SessionNotFound(f"session {session_id!r} not found (unknown, expired or deleted)")
            pipe = self.client.pipeline(transaction=False)
            for meta in manifest["records"]:
                pipe.mget(self._chunk_keys(session_id, meta))
            blobs = [_assemble(meta, chunks) for meta, chunks in zip(manifest["records"], pipe.execute(), strict=True)]
            self._touch(session_id, manifest)
            return StoredSession(manifest, blobs[0], blobs[1:])

        return self._call(run)

    # --- delete and locks -------------------------------------------------------------------------

    def delete(self, session_id: str) -> bool:
        def run() -> bool:
            raw = self.client.get(self._manifest_key(session_id))
            keys = [self._manifest_key(session_id), f"{self.base(session_id)}:lock"]
            try:
                manifest = _check_manifest(raw)
            except (CorruptSession, IncompatibleSession):
                manifest = None
            for meta in (manifest or {}).get("records", []):
                keys += self._chunk_keys(session_id, meta)
            self.client.delete(*keys)
            strays = list(self.client.scan_iter(match=f"{self.base(session_id)}:*", count=1000))
            if strays:
                self.client.delete(*strays)
            return raw is not None

        return self._call(run)

    def acquire(self, session_id: str, lease_s: float) -> str | None:
        token = uuid.uuid4().hex
        ok = self._call(
            lambda: self.client.set(f"{self.base(session_id)}:lock", token, nx=True, px=int(lease_s * 1000))
        )
        return token if ok else None

    def renew(self, session_id: str, token: str, lease_s: float) -> bool:
        return bool(
            self._call(lambda: self._renew(keys=[f"{self.base(session_id)}:lock"], args=[token, int(lease_s * 1000)]))
        )

    def release(self, session_id: str, token: str) -> None:
        self._call(lambda: self._release(keys=[f"{self.base(session_id)}:lock"], args=[token]))


class InProcessStore(_Limits):
    """The same interface in this process's memory (single-process default): sessions do not
    survive a restart and are not shared between workers."""

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

    def _live(self, session_id: str) -> dict[str, Any] | None:
        entry = self._manifests.get(session_id)
        if entry is None:
            return None
        if entry[0] < self._clock():
            self._expire(session_id)
            return None
        return _check_manifest(entry[1])

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

    def create(self, session_id: str, owner: dict[str, Any], prefix: bytes) -> None:
        self.check_size(len(prefix))
        with self._lock:
            self._check_capacity_locked()
            meta, _ = _record(prefix, self.chunk_bytes)
            self._blobs[(session_id, meta["id"])] = prefix
            manifest = _new_manifest(session_id, owner, meta)
            self._manifests[session_id] = (self._clock() + self.ttl_s, json.dumps(manifest))

    def append(self, session_id: str, expected_version: int, turn: bytes) -> None:
        with self._lock:
            manifest = self._live(session_id)
            if manifest is None:
                raise SessionNotFound(f"session {session_id!r} not found (unknown, expired or deleted)")
            if manifest["version"] != expected_version:
                raise VersionConflict("another turn of this session was saved first; retry", retry_after_s=0.1)
            self.check_size(manifest["size"] + len(turn))
            meta, _ = _record(turn, self.chunk_bytes)
            self._blobs[(session_id, meta["id"])] = turn
            manifest = _appended(manifest, meta)
            self._manifests[session_id] = (self._clock() + self.ttl_s, json.dumps(manifest))

    def manifest(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._live(session_id)

    def load(self, session_id: str) -> StoredSession:
        with self._lock:
            manifest = self._live(session_id)
            if manifest is None:
                raise SessionNotFound(f"session {session_id!r} not found (unknown, expired or deleted)")
            blobs = [_assemble(m, [self._blobs.get((session_id, m["id"]))]) for m in manifest["records"]]
            self._manifests[session_id] = (self._clock() + self.ttl_s, self._manifests[session_id][1])
            return StoredSession(manifest, blobs[0], blobs[1:])

    def delete(self, session_id: str) -> bool:
        with self._lock:
            existed = self._live(session_id) is not None
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
