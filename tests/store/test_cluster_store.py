"""The Redis store on a real local Redis Cluster (3 masters + 3 replicas): one slot per session,
scripts within it, counts over every master, damage found, locks."""

from __future__ import annotations

import os
import uuid

import pytest

from videoqa.worker.errors import CorruptSession, SessionNotFound
from videoqa.worker.kvcache.manifest import Owner
from videoqa.worker.kvcache.store import RedisStore, VersionConflict

OWNER = Owner("a", "m", "r", 0.0)


@pytest.fixture()
def store(redis_cluster) -> RedisStore:
    return RedisStore(redis_cluster.url, ttl_s=30, max_session_bytes=1 << 20, chunk_bytes=1000, replica_acks=1)


def test_sessions_live_in_one_slot_each_across_every_master(store, redis_cluster):
    client = redis_cluster.client()
    sessions = [uuid.uuid4().hex for _ in range(12)]
    before = store.session_count()
    for s in sessions:
        store.create(s, OWNER, os.urandom(2500))
        store.append(s, 0, b"turn one" * 200, key="k1")
        with pytest.raises(VersionConflict):
            store.append(s, 0, b"stale")
    masters = {redis_cluster.master_for_key(f"{RedisStore.base(s)}:manifest") for s in sessions}
    assert len(masters) > 1, "12 random sessions should land on more than one master"
    assert store.session_count() == before + 12, "the count spans every master"
    for s in sessions:
        keys = [k for k in client.scan_iter(match=f"*{s}*")]
        assert len({redis_cluster.keyslot(k) for k in keys}) == 1 and len(keys) == 1 + 3 + 2
        loaded = store.load(s)
        assert loaded.manifest.version == 1 and loaded.turns == [b"turn one" * 200]
        assert loaded.manifest.stored_by("k1") is not None
    victim = sessions[0]
    client.delete(next(k for k in client.scan_iter(match=f"*{victim}*:r:*")))
    with pytest.raises(CorruptSession):
        store.verify(store.manifest(victim))
    with pytest.raises(CorruptSession):
        store.append(victim, 1, b"on top of damage")
    for s in sessions:
        assert store.delete(s)
        assert list(client.scan_iter(match=f"*{s}*")) == []
    with pytest.raises(SessionNotFound):
        store.load(sessions[1])


def test_locks_in_the_cluster(store):
    s = uuid.uuid4().hex
    token = store.acquire(s, 5)
    assert token and store.acquire(s, 5) is None and store.renew(s, token, 5)
    store.release(s, token)
    assert store.acquire(s, 5)
