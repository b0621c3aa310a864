"""A turn's I/O stages never run on the compute thread or on the event loop."""

from __future__ import annotations

import threading

from tests.service.helpers import events, spec, upload
from tests.service.test_streams import append_upload, ask, segments, stub_at  # noqa: F401  (fixture)
from videoqa.v1 import videoqa_pb2 as pb


def test_store_and_serialisation_run_in_the_io_pool(start_pair, segments, monkeypatch):  # noqa: F811
    from videoqa.worker.kvcache import records

    threads: list[tuple[str, str]] = []

    def watched(name, fn):
        def call(*args, **kwargs):
            threads.append((name, threading.current_thread().name))
            return fn(*args, **kwargs)

        return call

    for name in ("encode_prefix", "encode_delta", "restore"):
        monkeypatch.setattr(records, name, watched(name, getattr(records, name)))
    address, worker = start_pair(prefill_chunk_frames=2)
    other, second = start_pair(prefill_chunk_frames=2)  # it restores the session from Redis
    for running in (worker, second):
        store = running.engine.sessions.store
        for name in ("create", "append", "manifest", "load", "delete", "acquire", "release"):
            monkeypatch.setattr(store, name, watched(f"store.{name}", getattr(store, name)))

    stub = stub_at(address)
    created = events(stub.CreateSession(upload(spec(frames=4, question="what?"), video=segments[0]), timeout=60))
    session_id = created["session"][0].session.session_id
    events(stub.AppendMedia(append_upload(session_id, segments[1]), timeout=60))
    assert ask(stub_at(other), session_id, "and now?")
    stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=30)
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id), timeout=30)

    names = {name for name, _ in threads}
    assert {"encode_prefix", "encode_delta", "restore", "store.create", "store.append", "store.load"} <= names
    assert {"store.delete", "store.acquire", "store.release"} <= names
    on = {thread for _, thread in threads}
    assert "videoqa-compute" not in on, threads
    loop_threads = {"test-servers", "MainThread"}  # the servers' event loop, and the test's own thread
    assert not on & loop_threads, threads


def test_a_chunk_in_several_forwards_answers_as_in_one(start_pair, segments):  # noqa: F811
    """``prefill_step_tokens`` splits each chunk's forward (other turns run between): through the
    service, a new session and an appended segment answer as with one forward per chunk."""
    answers = []
    for step_tokens in (0, 3):  # (chunks of one temporal patch hold a few tokens here)
        address, _ = start_pair(prefill_chunk_frames=2, prefill_step_tokens=step_tokens)
        stub = stub_at(address)
        request = spec(frames=4, question="what?", pruning=pb.PruningSpec(method="das", budget=0.5))
        created = events(stub.CreateSession(upload(request, video=segments[0]), timeout=60))
        session_id = created["session"][0].session.session_id
        events(stub.AppendMedia(append_upload(session_id, segments[1]), timeout=60))
        answers.append(([t.token_id for t in created["token"]], ask(stub, session_id, "and now?")))
    assert answers[0] == answers[1]
