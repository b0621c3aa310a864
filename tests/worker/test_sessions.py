"""The in-memory session store: idle TTL, capacity, tenant isolation, delete."""

from __future__ import annotations

import pytest

from videoqa.worker.errors import LimitExceeded, SessionNotFound
from videoqa.worker.sessions import InMemorySessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSession:
    def __init__(self, session_id: str, tenant: str = "a") -> None:
        self.session_id, self.tenant, self.last_used_at = session_id, tenant, 0.0


def test_ttl_is_idle_time_and_use_refreshes_it():
    clock = Clock()
    store = InMemorySessionStore(max_sessions=10, ttl_s=60, clock=clock)
    store.put(FakeSession("s1"))
    clock.now += 50
    store.get("a", "s1")  # used: the 60 s start again
    clock.now += 50
    assert store.get("a", "s1").session_id == "s1"
    clock.now += 61
    with pytest.raises(SessionNotFound):
        store.get("a", "s1")
    assert len(store) == 0


def test_capacity_counts_live_sessions_only():
    clock = Clock()
    store = InMemorySessionStore(max_sessions=2, ttl_s=60, clock=clock)
    store.put(FakeSession("s1"))
    store.put(FakeSession("s2"))
    store.put(FakeSession("s2"))  # replacing an existing session is not a new one
    with pytest.raises(LimitExceeded):
        store.reserve_check()
    with pytest.raises(LimitExceeded):
        store.put(FakeSession("s3"))
    clock.now += 61  # both expire
    store.put(FakeSession("s3"))
    assert len(store) == 1


def test_sessions_of_another_tenant_are_not_found():
    store = InMemorySessionStore(max_sessions=10, ttl_s=60)
    store.put(FakeSession("s1", tenant="a"))
    with pytest.raises(SessionNotFound):
        store.get("b", "s1")
    with pytest.raises(SessionNotFound):
        store.delete("b", "s1")
    store.delete("a", "s1")
    with pytest.raises(SessionNotFound):
        store.get("a", "s1")
