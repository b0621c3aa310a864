"""The Redis store against a real redis-server: chunks, manifests, damage, TTL, delete, caps, locks."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from videoqa.worker.errors import CorruptSession, IncompatibleSession, LimitExceeded, NotReady, SessionNotFound
from videoqa.worker.kvcache.manifest import Owner
from videoqa.worker.kvcache.store import RedisStore, VersionConflict

OWNER = Owner("a", "m", "r", 0.0)


@pytest.fixture()
def store(redis_server) -> RedisStore:
    return RedisStore(redis_server.url, ttl_s=30, max_session_bytes=1 << 20, chunk_bytes=1000)


def sid() -> str:
    return uuid.uuid4().hex


def keys_of(redis_server, session_id: str) -> list[bytes]:
    return list(redis_server.client().scan_iter(match=f"*{session_id}*"))


def test_chunked_round_trip_and_appends(store, redis_server):
    s, prefix = sid(), os.urandom(4500)
    store.create(s, OWNER, prefix)
    store.append(s, 0, b"turn one" * 300)
    store.append(s, 1, b"turn two")
    with pytest.raises(VersionConflict):
        store.append(s, 1, b"a stale writer")
    loaded = store.load(s)
    assert loaded.prefix == prefix and loaded.turns == [b"turn one" * 300, b"turn two"]
    assert loaded.manifest.version == 2 and loaded.manifest.owner.tenant == "a"
    assert len([k for k in keys_of(redis_server, s) if b":r:" in k]) == 5 + 3 + 1  # chunks of 1000 bytes
    assert not [k for k in keys_of(redis_server, s) if b":r:" in k and redis_server.client().ttl(k) < 0]


def test_truncated_or_missing_chunk_and_foreign_manifest(store, redis_server):
    client = redis_server.client()
    for damage in ("truncate", "missing"):
        s = sid()
        store.create(s, OWNER, os.urandom(3000))
        chunk = sorted(k for k in keys_of(redis_server, s) if b":r:" in k)[1]
        if damage == "truncate":
            client.set(chunk, client.get(chunk)[:-10], keepttl=True)
        else:
            client.delete(chunk)
        with pytest.raises(CorruptSession):
            store.load(s)
    s = sid()
    store.create(s, OWNER, b"x")
    key = f"{RedisStore.base(s)}:manifest"
    manifest = json.loads(client.get(key))
    client.set(key, json.dumps({**manifest, "format_version": 2}), keepttl=True)
    with pytest.raises(IncompatibleSession):
        store.load(s)
    client.set(key, b"{not json", keepttl=True)
    with pytest.raises(CorruptSession):
        store.load(s)


def test_ttl_delete_and_size_cap(redis_server):
    store = RedisStore(redis_server.url, ttl_s=1, max_session_bytes=2000, chunk_bytes=500)
    s = sid()
    store.create(s, OWNER, b"p" * 1200)
    store.append(s, 0, b"t" * 300)
    with pytest.raises(LimitExceeded):
        store.append(s, 1, b"t" * 600)  # 1200 + 300 + 600 > 2000
    assert keys_of(redis_server, s)
    assert store.delete(s)
    assert keys_of(redis_server, s) == [], "delete must leave no key behind"
    with pytest.raises(LimitExceeded):
        store.create(sid(), OWNER, b"p" * 2001)
    s = sid()
    store.create(s, OWNER, b"p")
    time.sleep(1.3)
    with pytest.raises(SessionNotFound):
        store.load(s)


def test_lock_lease(store):
    s = sid()
    token = store.acquire(s, 0.3)
    assert token and store.acquire(s, 0.3) is None
    assert store.renew(s, token, 0.3)
    time.sleep(0.5)
    other = store.acquire(s, 5)
    assert other and not store.renew(s, token, 5)
    store.release(s, token)  # not the holder any more: no effect
    assert store.acquire(s, 5) is None
    store.release(s, other)
    assert store.acquire(s, 5)


def test_unreachable_redis_is_not_ready():
    store = RedisStore("redis://127.0.0.1:1/0", ttl_s=10, max_session_bytes=1000, timeout_s=0.5)
    with pytest.raises(NotReady) as err:
        store.load("x")
    assert err.value.retry_after_s


def test_acl_user_and_password_from_configuration(redis_server):
    client = redis_server.client()
    client.execute_command("ACL", "SETUSER", "videoqa", "on", ">s3cret", "~videoqa:*", "+@all")
    try:
        store = RedisStore(redis_server.url, ttl_s=10, max_session_bytes=1000, username="videoqa", password="s3cret")
        s = sid()
        store.create(s, OWNER, b"x")
        assert store.load(s).prefix == b"x" and store.delete(s)
        wrong = RedisStore(redis_server.url, ttl_s=10, max_session_bytes=1000, username="videoqa", password="nope")
        with pytest.raises(NotReady):
            wrong.load(s)
    finally:
        client.execute_command("ACL", "DELUSER", "videoqa")
