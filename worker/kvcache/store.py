"""Bytes ↔ storage for sessions. No tensors: records are opaque, checksummed blobs.

A session is a *manifest* (``manifest.Manifest``: owner, model and revision, version = stored
delta records, the records with their checksums, idempotency keys and outcomes) plus its records
(the prefix, then one per turn or appended segment), each split into chunks. Writers put the
chunks first and the manifest last, atomically, so a reader never sees a half-written session;
a record is appended by compare-and-set on the manifest's version, in one script that also
checks that every chunk the session builds on is still there with its size (damage is found
before a turn is stored on top of it) and slides every key's TTL. A size cap bounds a session;
delete removes every key. Turns on one session are serialized across workers by a lease lock.

Outcomes, not calls: when a write's reply is lost (timeout, connection reset, a client-side
retry of it), the store reads the manifest back and decides by its own record id whether the
write happened; only when it cannot tell does it raise :class:`StoreUnavailable` saying so (the
caller's idempotency key then settles it on retry). A full Redis is :class:`StoreFull`.

Keys (layout v2) share one Redis Cluster hash slot per session: ``videoqa:v2:s:{<id>}:manifest``,
``…:r:<record id>:<chunk>``, ``…:lock``; every script touches that one slot. Sessions of the
previous layout (``videoqa:v1:s:<id>:…``) are refused with FAILED_PRECONDITION, and deleted.
``redis+cluster://host:port`` (``rediss+cluster://`` with TLS) selects redis-py's cluster client;
``redis+sentinel://host:port[,…]/service[/db]`` the master Redis Sentinel names (followed on failover).
``InProcessStore`` (``memory_store``) is the single-process default behind the same interface.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from videoqa.worker.errors import (
    CorruptSession,
    IncompatibleSession,
    LimitExceeded,
    NotReady,
    SessionNotFound,
    StoreFull,
    StoreUnavailable,
)
from videoqa.worker.kvcache.manifest import Manifest, Owner, RecordMeta, assemble, owner_tenant, split_record

log = logging.getLogger(__name__)

#: Version of the key layout (not of the record format, which the manifest carries).
KEY_LAYOUT = 2
#: Read-backs after an ambiguous write: tries, and the pause between them.
READ_BACK_TRIES, READ_BACK_PAUSE_S = 3, 0.2


@dataclass
class StoredSession:
    manifest: Manifest
    prefix: bytes
    turns: list[bytes]


class VersionConflict(NotReady):
    """Another writer appended a record first; the caller retries from the stored state."""


class SessionStore(Protocol):
    def create(self, session_id: str, owner: Owner, prefix: bytes) -> None: ...
    def append(self, session_id: str, expected_version: int, turn: bytes, key: str = "", outcome: str = "") -> None: ...
    def manifest(self, session_id: str) -> Manifest | None: ...
    def verify(self, manifest: Manifest) -> None: ...
    def load(self, session_id: str) -> StoredSession: ...
    def owner(self, session_id: str) -> tuple[bool, str | None]: ...
    def delete(self, session_id: str) -> bool: ...
    def acquire(self, session_id: str, lease_s: float) -> str | None: ...
    def renew(self, session_id: str, token: str, lease_s: float) -> bool: ...
    def release(self, session_id: str, token: str) -> None: ...


class StoreLimits:
    """What both stores bound: the TTL, a session's size, the chunk size."""

    def __init__(self, ttl_s: float, max_session_bytes: int, chunk_bytes: int):
        self.ttl_s, self.max_session_bytes, self.chunk_bytes = ttl_s, max_session_bytes, chunk_bytes

    def check_size(self, total: int) -> None:
        if total > self.max_session_bytes:
            raise LimitExceeded(
                f"the session would take {total} bytes; the limit per session is {self.max_session_bytes}"
            )


def not_found(session_id: str, detail: str = "unknown, expired or deleted") -> SessionNotFound:
    return SessionNotFound(f"session {session_id!r} not found ({detail})")


def version_conflict() -> VersionConflict:
    return VersionConflict("another turn of this session was saved first; retry", retry_after_s=0.1)


# Checks that the chunks of the records a session builds on exist with their sizes.
# KEYS[first..]: the chunk keys, record after record; ARGV[from..]: (chunk count, size) per record.
_CHECK_CHUNKS = """
local function chunks_intact(first, from)
  local k = first
  for i = from, #ARGV, 2 do
    local total = 0
    for _ = 1, tonumber(ARGV[i]) do
      if redis.call('EXISTS', KEYS[k]) == 0 then return false end
      total = total + redis.call('STRLEN', KEYS[k])
      k = k + 1
    end
    if total ~= tonumber(ARGV[i + 1]) then return false end
  end
  return true
end
"""


def _sentinel_master(tls: bool, rest: str, kwargs: dict[str, Any]):
    """A client of the master that Redis Sentinel names: ``host:port[,host:port…]/service[/db]``
    (the sentinels, the monitored service's name, the database); it follows failovers."""
    from redis.sentinel import Sentinel

    hosts, _, path = rest.partition("/")
    service, _, db = path.partition("/")
    if not hosts or not service:
        raise ValueError("a Sentinel URL is redis+sentinel://host:port[,host:port...]/service[/db]")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        sentinels.append((name or host, int(port or 26379)))
    if tls:
        kwargs = {**kwargs, "ssl": True}
    socket = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    return Sentinel(sentinels, sentinel_kwargs=socket, **kwargs).master_for(service, db=int(db or 0))


class RedisStore(StoreLimits):
    """Sessions in Redis or a Redis Cluster (redis-py), chunked, with manifests written last."""

    backend = "redis"

    # KEYS[1]: manifest; KEYS[2..]: chunks of its records. ARGV: expected version, new manifest,
    # manifest TTL (ms), chunk TTL (ms), then (chunk count, size) per record.
    _APPEND = (
        _CHECK_CHUNKS
        + """
    local raw = redis.call('GET', KEYS[1])
    if not raw then return -1 end
    if cjson.decode(raw)['version'] ~= tonumber(ARGV[1]) then return -2 end
    if not chunks_intact(2, 5) then return -3 end
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    for i = 2, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
    return 1
    """
    )
    # KEYS as _APPEND; ARGV: (chunk count, size) per record.
    _VERIFY = _CHECK_CHUNKS + "if chunks_intact(2, 1) then return 1 end return 0"
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
        replica_acks: int = 0,
    ):
        import redis

        super().__init__(ttl_s, max_session_bytes, chunk_bytes)
        #: Replicas that must acknowledge a manifest write (``WAIT``) before it counts as stored.
        self.replica_acks = replica_acks
        self.timeout_s = timeout_s
        kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if username:
            kwargs["username"] = username
        if password:
            kwargs["password"] = password
        if ca_certs:
            kwargs["ssl_ca_certs"] = ca_certs
        scheme, _, rest = url.partition("://")
        self.cluster = scheme in ("redis+cluster", "rediss+cluster")
        if self.cluster:
            from redis.cluster import RedisCluster

            self.client = RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}", **kwargs)
        elif scheme in ("redis+sentinel", "rediss+sentinel"):
            self.client = _sentinel_master(scheme == "rediss+sentinel", rest, kwargs)
        else:
            self.client = redis.Redis.from_url(url, **kwargs)
        self.backend = "redis-cluster" if self.cluster else "redis"
        exc = redis.exceptions
        self._unreachable = (exc.ConnectionError, exc.TimeoutError, exc.ClusterDownError, exc.TryAgainError)
        self._full = exc.OutOfMemoryError
        self._response_error = exc.ResponseError
        #: Hashes a record while its chunks are written (hashlib releases the GIL).
        self._hashing = ThreadPoolExecutor(4, thread_name_prefix="videoqa-store-hash")
        self._release = self.client.register_script(self._RELEASE)
        self._renew = self.client.register_script(self._RENEW)
        self._verify = self.client.register_script(self._VERIFY)

    # --- keys ------------------------------------------------------------------------------------

    @staticmethod
    def base(session_id: str) -> str:
        """The prefix of every key of a session: one hash slot (``{id}``)."""
        return f"videoqa:v{KEY_LAYOUT}:s:{{{session_id}}}"

    @staticmethod
    def legacy_base(session_id: str) -> str:
        """The prefix of the keys of a session stored by key layout v1 (before hash tags)."""
        return f"videoqa:v1:s:{session_id}"

    def _manifest_key(self, session_id: str) -> str:
        return f"{self.base(session_id)}:manifest"

    def _lock_key(self, session_id: str) -> str:
        return f"{self.base(session_id)}:lock"

    def _chunk_keys(self, session_id: str, meta: RecordMeta) -> list[str]:
        return [f"{self.base(session_id)}:r:{meta.id}:{i}" for i in range(meta.chunks)]

    def _records_args(self, manifest: Manifest) -> tuple[list[str], list[int]]:
        """KEYS and ARGV of the chunk check: every record's chunk keys, and (count, size) per record."""
        keys: list[str] = []
        args: list[int] = []
        for meta in manifest.records:
            keys += self._chunk_keys(manifest.session_id, meta)
            args += [meta.chunks, meta.size]
        return keys, args

    def _ms(self, extra_s: float = 0.0) -> int:
        return int((self.ttl_s + extra_s) * 1000)

    # --- error mapping ---------------------------------------------------------------------------

    def _call(self, fn, *args):
        """Run one store operation, mapping Redis' failures to the service's errors."""
        try:
            return fn(*args)
        except self._full as error:
            raise self._store_full() from error
        except self._unreachable as error:
            self._refresh_topology()
            raise StoreUnavailable(
                "the session store (Redis) is unreachable; retry shortly", retry_after_s=2.0
            ) from error

    @staticmethod
    def _store_full() -> StoreFull:
        return StoreFull(
            "the session store (Redis) is full: it refuses writes (maxmemory reached with an eviction policy "
            "that keeps every key); nothing was saved and the turn was rolled back. Operators: raise Redis' "
            "maxmemory, add shards, or shorten VIDEOQA_SESSION_TTL_S",
            retry_after_s=30.0,
        )

    def _refresh_topology(self) -> None:
        """After a node failed, a cluster client learns the new slot owners (best effort)."""
        if self.cluster:
            try:
                self.client.nodes_manager.initialize()
            except Exception:
                log.debug("cluster topology refresh failed", exc_info=True)

    def session_count(self) -> int:
        """Stored sessions, over every master (a SCAN of the manifests: call it rarely)."""
        pattern = f"videoqa:v{KEY_LAYOUT}:s:*:manifest"
        return self._call(lambda: sum(1 for _ in self.client.scan_iter(match=pattern, count=1000)))

    def was_expired(self, session_id: str) -> bool:
        """Redis drops expired keys itself: an expired session looks unknown."""
        return False

    # --- writes ----------------------------------------------------------------------------------

    def _pipeline(self, session_id: str):
        """A pipeline (no transaction) for the keys of one session: on the node serving its slot."""
        return self._node_client(self._manifest_key(session_id)).pipeline(transaction=False)

    def _node_client(self, key: str):
        """A client of the node serving ``key`` (the one client when not clustered)."""
        return self.client.get_node_from_key(key).redis_connection if self.cluster else self.client

    def _split(self, blob: bytes, key: str = "", outcome: str = "") -> tuple[RecordMeta, list, Future]:
        """The record of ``blob`` and its chunks, with its SHA-256 computed meanwhile on another
        thread (``meta.sha256`` is a placeholder until :meth:`_hashed`)."""
        digest = self._hashing.submit(lambda: hashlib.sha256(blob).hexdigest())
        meta, chunks = split_record(blob, self.chunk_bytes, key, outcome, digest="")
        return meta, chunks, digest

    @staticmethod
    def _hashed(meta: RecordMeta, digest: Future) -> RecordMeta:
        return replace(meta, sha256=digest.result())

    def _write_chunks(self, session_id: str, meta: RecordMeta, chunks: list) -> None:
        pipe = self._pipeline(session_id)
        for key, chunk in zip(self._chunk_keys(session_id, meta), chunks, strict=True):
            pipe.set(key, chunk, px=self._ms(60))  # chunks outlive their manifest, never the reverse
        pipe.execute()

    def _drop_chunks(self, session_id: str, meta: RecordMeta) -> None:
        """Remove a record that did not become part of the session (best effort: they expire)."""
        try:
            self.client.delete(*self._chunk_keys(session_id, meta))
        except Exception:
            log.debug("could not remove the chunks of an unstored record", exc_info=True)

    def _on_node(self, key: str, commands) -> list:
        """Run ``commands(pipe)`` in one pipeline on one connection to the node serving ``key``,
        followed by ``WAIT`` for the replicas when ``replica_acks`` is set (WAIT counts the writes
        of its own connection). Returns the results (errors as values), WAIT's last."""
        pipe = self._node_client(key).pipeline(transaction=False)
        commands(pipe)
        if self.replica_acks:
            pipe.execute_command("WAIT", self.replica_acks, int(self.timeout_s * 1000))
        return pipe.execute(raise_on_error=False)

    def _replicated(self, results: list) -> bool:
        return not self.replica_acks or (isinstance(results[-1], int) and results[-1] >= self.replica_acks)

    def _raise_result_error(self, value) -> None:
        """Raise a pipeline's error value (as ``_call`` maps it)."""
        if isinstance(value, BaseException):
            if isinstance(value, self._response_error) and "MOVED" in str(value):
                self._refresh_topology()  # the command did not run: the caller's retry finds the new owner
            raise value

    def _outcome_unknown(self) -> StoreUnavailable:
        return StoreUnavailable(
            "the session store (Redis) did not confirm the write and could not be read back: the turn may or may "
            "not have been stored; retry with the same idempotency key",
            retry_after_s=2.0,
        )

    def _read_back(self, session_id: str, record_id: str) -> bool:
        """Whether the manifest now holds ``record_id`` (after an ambiguous write). Raises
        :meth:`_outcome_unknown` when the store cannot say."""
        for attempt in range(READ_BACK_TRIES):
            try:
                manifest = self._manifest_now(session_id)
            except self._unreachable:
                self._refresh_topology()
                time.sleep(READ_BACK_PAUSE_S * (attempt + 1))
                continue
            return manifest is not None and manifest.holds(record_id)
        raise self._outcome_unknown()

    def _manifest_now(self, session_id: str) -> Manifest | None:
        raw = self.client.get(self._manifest_key(session_id))
        return None if raw is None else Manifest.from_json(raw)

    def create(self, session_id: str, owner: Owner, prefix: bytes) -> None:
        self.check_size(len(prefix))
        meta, chunks, digest = self._split(prefix)
        self._call(self._write_chunks, session_id, meta, chunks)
        meta = self._hashed(meta, digest)
        manifest = Manifest.new(session_id, owner, meta)
        key = self._manifest_key(session_id)
        try:
            results = self._on_node(key, lambda p: p.set(key, manifest.to_json(), px=self._ms(), nx=True))
            self._raise_result_error(results[0])
            if results[0] and self._replicated(results):
                return
        except self._full as error:
            self._drop_chunks(session_id, meta)
            raise self._store_full() from error
        except self._unreachable:
            pass  # the reply was lost: the read-back decides
        if not self._read_back(session_id, meta.id):
            self._drop_chunks(session_id, meta)
            raise StoreUnavailable("the session store (Redis) did not store the session; retry", retry_after_s=1.0)
        if not self._replicated_now(key):
            raise self._outcome_unknown()

    def _replicated_now(self, key: str) -> bool:
        """After a read-back found the write: wait for the replicas again (a new connection's WAIT
        covers nothing it did not write, so this asks the node with a no-op write first)."""
        if not self.replica_acks:
            return True
        try:
            results = self._on_node(key, lambda p: p.pexpire(key, self._ms()))
        except self._unreachable:
            return False
        return self._replicated(results)

    def append(self, session_id: str, expected_version: int, turn: bytes, key: str = "", outcome: str = "") -> None:
        """Store ``turn`` as the record after ``expected_version`` ones, with the idempotency
        ``key`` of the call and its ``outcome``. DATA_LOSS when a chunk the session builds on is
        gone or truncated; the caller's session stays as it was on any failure."""
        manifest = self._call(self._manifest_now, session_id)
        if manifest is None:
            raise not_found(session_id)
        if manifest.version != expected_version:  # the new manifest is built from this one
            raise version_conflict()
        self.check_size(manifest.size + len(turn))
        meta, chunks, digest = self._split(turn, key, outcome)
        self._call(self._write_chunks, session_id, meta, chunks)
        updated = manifest.appended(self._hashed(meta, digest))
        manifest_key = self._manifest_key(session_id)
        chunk_keys, sizes = self._records_args(manifest)
        args = [expected_version, updated.to_json(), self._ms(), self._ms(60), *sizes]
        try:
            results = self._on_node(
                manifest_key, lambda p: p.eval(self._APPEND, 1 + len(chunk_keys), manifest_key, *chunk_keys, *args)
            )
            self._raise_result_error(results[0])
            result = results[0]
        except self._full as error:
            self._drop_chunks(session_id, meta)
            raise self._store_full() from error
        except self._unreachable:
            result = None  # the reply was lost: the read-back decides
        if result == 1 and self._replicated(results):
            return
        if result == 1 or self._read_back(session_id, meta.id):
            if self._replicated_now(manifest_key):
                return
            raise self._outcome_unknown()
        self._drop_chunks(session_id, meta)
        if result == -1:
            raise not_found(session_id, "it expired or was deleted while its turn ran")
        if result == -3:
            raise CorruptSession("a stored record of this session is missing or truncated; the session is discarded")
        if result == -2:
            raise version_conflict()
        raise StoreUnavailable("the session store (Redis) did not store the turn; retry", retry_after_s=1.0)

    # --- reads -----------------------------------------------------------------------------------

    def manifest(self, session_id: str) -> Manifest | None:
        """The session's manifest; None when unknown (FAILED_PRECONDITION for a layout-v1 session)."""

        def run() -> Manifest | None:
            manifest = self._manifest_now(session_id)
            if manifest is None and self.client.exists(f"{self.legacy_base(session_id)}:manifest"):
                raise IncompatibleSession(
                    f"session {session_id!r} was stored by an earlier version of videoqa (key layout v1) and cannot "
                    f"be continued; create it again (deleting it works)"
                )
            return manifest

        return self._call(run)

    def verify(self, manifest: Manifest) -> None:
        """DATA_LOSS unless every chunk of ``manifest``'s records exists with its size (one round
        trip; the checksums are checked whenever the records are read)."""
        keys, sizes = self._records_args(manifest)
        manifest_key = self._manifest_key(manifest.session_id)
        if not self._call(lambda: self._verify(keys=[manifest_key, *keys], args=sizes)):
            raise CorruptSession("a stored record of this session is missing or truncated; the session is discarded")

    def load(self, session_id: str) -> StoredSession:
        def run() -> StoredSession:
            manifest = self._manifest_now(session_id)
            if manifest is None:
                raise not_found(session_id)
            pipe = self._pipeline(session_id)
            for meta in manifest.records:
                pipe.mget(self._chunk_keys(session_id, meta))
            blobs = [assemble(meta, chunks) for meta, chunks in zip(manifest.records, pipe.execute(), strict=True)]
            self._touch(manifest)
            return StoredSession(manifest, blobs[0], blobs[1:])

        return self._call(run)

    def _touch(self, manifest: Manifest) -> None:
        """Slide the TTL of every key of the session (best effort: a failure loses nothing)."""
        try:
            pipe = self._pipeline(manifest.session_id)
            pipe.pexpire(self._manifest_key(manifest.session_id), self._ms())
            for key in self._records_args(manifest)[0]:
                pipe.pexpire(key, self._ms(60))
            pipe.execute()
        except Exception:
            log.debug("could not slide the TTL of session %s", manifest.session_id, exc_info=True)

    # --- delete and locks -------------------------------------------------------------------------

    def owner(self, session_id: str) -> tuple[bool, str | None]:
        """(whether the session exists in any layout or format, the tenant its manifest names, or
        None when the manifest is too damaged to say)."""

        def run() -> tuple[bool, str | None]:
            for key in (self._manifest_key(session_id), f"{self.legacy_base(session_id)}:manifest"):
                raw = self.client.get(key)
                if raw is not None:
                    return True, owner_tenant(raw)
            return False, None

        return self._call(run)

    def delete(self, session_id: str) -> bool:
        """Remove every key of the session, whatever its format or damage (either key layout)."""

        def run() -> bool:
            existed = False
            for base, hashed in ((self.base(session_id), True), (self.legacy_base(session_id), False)):
                present = bool(self.client.exists(f"{base}:manifest"))
                existed |= present
                if not (present or hashed):
                    continue  # no layout-v1 session: no need to look for its keys
                keys = list(self._scan(f"{base}:*", hashed))
                if hashed or not self.cluster:
                    if keys:
                        self.client.delete(*keys)
                else:
                    for key in keys:  # layout-v1 keys lie in different slots
                        self.client.delete(key)
            return existed

        return self._call(run)

    def _scan(self, pattern: str, hashed: bool):
        """Keys matching ``pattern``: on the node serving the session's slot when hash-tagged."""
        if self.cluster and hashed:
            return self._node_client(pattern.replace("*", "manifest")).scan_iter(match=pattern, count=1000)
        return self.client.scan_iter(match=pattern, count=1000)

    def acquire(self, session_id: str, lease_s: float) -> str | None:
        token = uuid.uuid4().hex
        ok = self._call(lambda: self.client.set(self._lock_key(session_id), token, nx=True, px=int(lease_s * 1000)))
        return token if ok else None

    def renew(self, session_id: str, token: str, lease_s: float) -> bool:
        return bool(
            self._call(lambda: self._renew(keys=[self._lock_key(session_id)], args=[token, int(lease_s * 1000)]))
        )

    def release(self, session_id: str, token: str) -> None:
        self._call(lambda: self._release(keys=[self._lock_key(session_id)], args=[token]))
