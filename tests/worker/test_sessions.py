"""The in-process session store: idle TTL, capacity, versioned appends, locks, delete."""

from __future__ import annotations

import pytest

from videoqa.worker.errors import LimitExceeded, SessionNotFound
from videoqa.worker.kvcache.manifest import Owner
from videoqa.worker.kvcache.memory_store import InProcessStore
from videoqa.worker.kvcache.store import VersionConflict

OWNER = Owner("a", "m", "r", 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock, **kw) -> InProcessStore:
    kw.setdefault("max_sessions", 10)
    kw.setdefault("max_session_bytes", 1 << 20)
    return InProcessStore(ttl_s=60, clock=clock, **kw)


def test_ttl_is_idle_time_and_use_refreshes_it():
    clock = Clock()
    s = store(clock)
    s.create("s1", OWNER, b"prefix")
    clock.now += 50
    s.load("s1")  # used: the 60 s start again
    clock.now += 50
    assert s.load("s1").prefix == b"prefix"
    clock.now += 61
    with pytest.raises(SessionNotFound):
        s.load("s1")


def test_capacity_and_size_cap():
    clock = Clock()
    s = store(clock, max_sessions=2, max_session_bytes=100)
    s.create("s1", OWNER, b"x")
    s.create("s2", OWNER, b"y")
    with pytest.raises(LimitExceeded):
        s.reserve_check()
    with pytest.raises(LimitExceeded):
        s.create("s3", OWNER, b"z")
    clock.now += 61  # both expire
    s.create("s3", OWNER, b"z" * 100)
    with pytest.raises(LimitExceeded):
        s.append("s3", 0, b"one byte too many")


def test_versioned_appends_and_locks():
    clock = Clock()
    s = store(clock)
    s.create("s1", OWNER, b"p")
    s.append("s1", 0, b"t1")
    with pytest.raises(VersionConflict):
        s.append("s1", 0, b"stale writer")
    s.append("s1", 1, b"t2")
    loaded = s.load("s1")
    assert loaded.manifest.version == 2 and loaded.turns == [b"t1", b"t2"]
    token = s.acquire("s1", 5)
    assert token and s.acquire("s1", 5) is None
    clock.now += 6  # the lease ran out
    other = s.acquire("s1", 5)
    assert other and not s.renew("s1", token, 5)
    s.release("s1", other)
    assert s.delete("s1") and not s.delete("s1")
    with pytest.raises(SessionNotFound):
        s.load("s1")


def test_hot_tier_is_bounded_in_bytes(tiny_model):
    """The LRU keeps the most recently used sessions within its byte budget."""
    from tests.pruning.conftest import media
    from videoqa.worker.model.generate import ModelRunner
    from videoqa.worker.sessions import MediaSegment, Session, SessionManager
    from videoqa.worker.types import MediaKind, PruningSpec, SamplingSpec

    lm = tiny_model("tiny-qwen2-vl")
    gen = ModelRunner(lm)
    prompt = lm.adapter.prepare(media(), "what?")

    def session(name: str) -> Session:
        state, _ = gen.prefill(prompt)
        return Session(
            name,
            "a",
            lm.model_id,
            PruningSpec(),
            [MediaSegment.of(media(), MediaKind.VIDEO, SamplingSpec(), prompt.layout)],
            state,
            0,
            0,
            lm.kv_bytes_per_token,
        )

    one = session("s0").state.cache_bytes()
    manager = SessionManager(
        InProcessStore(ttl_s=60, max_session_bytes=1 << 30, max_sessions=10),
        models={lm.model_id: lm},
        hot_bytes=int(2.5 * one),
    )
    for name in ("s1", "s2", "s3"):
        manager.create(session(name))
    assert list(manager._hot) == ["s2", "s3"] and manager._hot_total == 2 * one
    manager.get("a", "s2")  # used: s2 becomes the most recent
    manager.create(session("s4"))
    assert list(manager._hot) == ["s2", "s4"]
    assert manager.get("a", "s1").session_id == "s1"  # evicted from the hot tier, restored from the store
    manager.delete("a", "s1")
    assert "s1" not in manager._hot and manager._hot_total == sum(manager._hot_sizes.values())
