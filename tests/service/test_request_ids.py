"""Request ids: returned in the trailing metadata ``x-request-id`` of every outcome (errors, streams,
refusals), the client's own id echoed, and stamped with the session id on the log lines of the call,
in the frontend and in the worker."""

from __future__ import annotations

import logging
import re
import time

import grpc
import pytest
from grpc_status import rpc_status

from videoqa.service import logcontext
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc
from videoqa.worker.errors import SessionNotFound

UNKNOWN = "0123456789abcdef0123456789abcdef"  # well-formed, never created


def request_id_of(trailing) -> str | None:
    values = [v for k, v in trailing or () if k == "x-request-id"]
    assert len(values) <= 1, trailing
    return values[0] if values else None


def failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def test_a_failed_call_returns_its_request_id(stub):
    for call in (
        lambda: list(stub.Ask(pb.AskRequest(session_id=UNKNOWN, question="hi?"), timeout=10)),  # the worker's
        lambda: list(stub.Ask(pb.AskRequest(session_id="no/such", question="hi?"), timeout=10)),  # the frontend's
        lambda: stub.GetSession(pb.GetSessionRequest(session_id=UNKNOWN), timeout=10),
    ):
        error = failure(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert re.fullmatch(r"[0-9a-f]{32}", request_id_of(error.trailing_metadata()) or "")
    # the error details (google.rpc.Status in the trailers) still reach the client beside it
    error = failure(lambda: stub.GetSession(pb.GetSessionRequest(session_id=UNKNOWN), timeout=10))
    assert rpc_status.from_call(error).details[0].type_url.endswith("google.rpc.ErrorInfo")
    first = request_id_of(
        failure(lambda: stub.GetSession(pb.GetSessionRequest(session_id=UNKNOWN))).trailing_metadata()
    )
    second = request_id_of(
        failure(lambda: stub.GetSession(pb.GetSessionRequest(session_id=UNKNOWN))).trailing_metadata()
    )
    assert first != second


def test_the_clients_request_id_is_echoed(stub):
    mine = (("x-request-id", "support-ticket-4711"),)
    error = failure(lambda: list(stub.Ask(pb.AskRequest(session_id=UNKNOWN, question="hi?"), metadata=mine)))
    assert request_id_of(error.trailing_metadata()) == "support-ticket-4711"
    _, call = stub.ListModels.with_call(pb.ListModelsRequest(), timeout=10, metadata=mine)  # success too
    assert request_id_of(call.trailing_metadata()) == "support-ticket-4711"
    unusable = (("x-request-id", "x" * 500),)  # too long to log and echo: replaced
    _, call = stub.ListModels.with_call(pb.ListModelsRequest(), timeout=10, metadata=unusable)
    assert re.fullmatch(r"[0-9a-f]{32}", request_id_of(call.trailing_metadata()))


def test_log_lines_of_a_call_carry_its_ids_in_frontend_and_worker(server, stub, caplog, monkeypatch):
    async def get_session(tenant, session_id):
        logging.getLogger("videoqa.worker.engine").info("looking session %s up", session_id)
        raise SessionNotFound(f"session {session_id!r} not found")

    monkeypatch.setattr(server.engine, "get_session", get_session)
    logcontext.install([caplog.handler])
    caplog.set_level(logging.INFO)
    mine = (("x-request-id", "trace-me-123"),)
    error = failure(lambda: stub.GetSession(pb.GetSessionRequest(session_id=UNKNOWN), timeout=10, metadata=mine))
    assert error.code() == grpc.StatusCode.NOT_FOUND

    def records():
        return [r for r in caplog.records if getattr(r, "request_id", "") == "trace-me-123"]

    deadline = time.monotonic() + 10
    while len(records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    by_logger = {r.name: r for r in records()}
    worker, frontend = by_logger["videoqa.worker.engine"], by_logger["videoqa.service.logcontext"]
    assert worker.getMessage() == f"looking session {UNKNOWN} up"
    assert frontend.getMessage().startswith("GetSession failed: NOT_FOUND")
    for record in (worker, frontend):
        assert record.session_id == UNKNOWN
        assert record.call == f" [request_id=trace-me-123 session_id={UNKNOWN}]"
    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "no call", None, None)
    logcontext.CallFilter().filter(outside)
    assert outside.request_id == outside.session_id == outside.call == ""


def test_refusals_before_any_worker_carry_request_ids(loop_thread):
    """Unauthenticated, no worker available, draining: all with an id."""
    from videoqa.service.app import FrontendSettings, start_frontend
    from videoqa.service.auth import Unauthenticated

    def authenticate(metadata):
        if ("authorization", "Bearer ok") not in tuple(metadata):
            raise Unauthenticated("no key")
        return "tenant"

    settings = FrontendSettings(listen="127.0.0.1:0", probe_interval_s=0.1)
    frontend = loop_thread.run(start_frontend(settings, ["127.0.0.1:1"], authenticate=authenticate))
    key = (("authorization", "Bearer ok"),)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
            stub = videoqa_pb2_grpc.VideoQAStub(channel)
            error = failure(lambda: stub.ListModels(pb.ListModelsRequest(), timeout=10))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED and request_id_of(error.trailing_metadata())
            error = failure(lambda: stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=key))
            assert error.code() == grpc.StatusCode.UNAVAILABLE and request_id_of(error.trailing_metadata())
            loop_thread.run(frontend.begin_drain())
            error = failure(lambda: list(stub.Ask(pb.AskRequest(session_id=UNKNOWN, question="q"), metadata=key)))
            assert error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.details()
            assert request_id_of(error.trailing_metadata())
    finally:
        loop_thread.run(frontend.stop(0))


def test_a_turns_steps_on_the_compute_thread_log_with_its_ids(server, stub, caplog, monkeypatch):
    """The turn runs on the worker's compute thread, in the context of the call that submitted it."""
    from tests.media import make_video
    from tests.service.helpers import events, spec, upload

    runner = server.engine._runners["tiny-qwen2-vl"]
    feed = runner.feed

    def logged_feed(state, ids):
        logging.getLogger("videoqa.worker.turns").info("feeding %d tokens", len(ids))
        return feed(state, ids)

    monkeypatch.setattr(runner, "feed", logged_feed)
    logcontext.install([caplog.handler])
    caplog.set_level(logging.INFO)
    video = make_video(None, frames=8, size=(96, 64), fps=8)
    session_id = events(stub.CreateSession(upload(spec(), video=video), timeout=60))["session"][0].session.session_id
    request = pb.AskRequest(session_id=session_id, question="what?", generation=pb.GenerationParams(max_new_tokens=2))
    events(stub.Ask(request, timeout=60, metadata=(("x-request-id", "turn-trace-7"),)))
    fed = [r for r in caplog.records if r.getMessage().startswith("feeding")]
    assert fed and all(r.threadName == "videoqa-compute" for r in fed)
    assert [(r.request_id, r.session_id) for r in fed] == [("turn-trace-7", session_id)]
