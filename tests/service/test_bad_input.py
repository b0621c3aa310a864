"""Bad input gets the right status and leaves the server serving; cancellation and deadlines stop decoding."""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.media import corrupt_variants, make_video
from tests.service.helpers import events, spec, upload
from videoqa.v1 import videoqa_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_video(None, frames=24, size=(96, 64), fps=12)


@pytest.fixture(scope="module")
def session_id(server, video) -> str:
    from videoqa.v1 import videoqa_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = videoqa_pb2_grpc.VideoQAStub(channel)
        return events(stub.CreateSession(upload(spec(), video=video), timeout=60))["session"][0].session.session_id


def create_error(stub, requests) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.CreateSession(requests, timeout=60))
    return err.value


def assert_still_serving(stub, session_id: str) -> None:
    reply = events(stub.Ask(pb.AskRequest(session_id=session_id, question="still there?"), timeout=30))
    assert reply["stats"], "a normal question should still be answered"


@pytest.mark.parametrize("variant", ["empty", "truncated", "random", "text"])
def test_undecodable_video_is_invalid_argument(stub, video, session_id, variant):
    data = corrupt_variants(video)[variant]
    error = create_error(stub, upload(spec(), video=data))
    assert error.code() == INVALID, error.details()
    assert_still_serving(stub, session_id)


def test_upload_without_spec_or_media(stub):
    assert create_error(stub, iter([])).code() == INVALID
    assert create_error(stub, iter([pb.CreateSessionRequest(video_chunk=b"abc")])).code() == INVALID
    assert create_error(stub, upload(spec())).code() == INVALID  # spec, then nothing
    images = upload(spec(media_kind=pb.MEDIA_KIND_IMAGES), images=[])
    assert create_error(stub, images).code() == INVALID


def test_upload_over_size_cap(stub, session_id):
    big = bytes(5 << 20)
    error = create_error(stub, upload(spec(), video=big, chunk=1 << 20))
    assert error.code() == EXHAUSTED
    declared = spec(total_bytes=5 << 20)
    assert create_error(stub, upload(declared, video=b"x")).code() == EXHAUSTED
    assert_still_serving(stub, session_id)


def test_frame_counts(stub, video):
    zero = pb.SessionSpec(model="tiny-qwen2-vl", sampling=pb.FrameSampling(num_frames=0))
    error = create_error(stub, upload(zero, video=video))
    assert error.code() == INVALID
    violations = _field_violations(error)
    assert violations == ["sampling.num_frames"]
    assert create_error(stub, upload(spec(frames=17), video=video)).code() == EXHAUSTED
    negative_fps = pb.SessionSpec(sampling=pb.FrameSampling(fps=-1.0))
    assert create_error(stub, upload(negative_fps, video=video)).code() == INVALID


def test_unknown_model_method_and_bad_parameters(stub, video):
    cases = [
        spec(model="no-such-model"),
        spec(pruning=pb.PruningSpec(method="no_such_method")),
        spec(pruning=pb.PruningSpec(method="full", params={"alpha": 0.5})),
        spec(pruning=pb.PruningSpec(method="full", budget=2.0)),
        spec(pruning=pb.PruningSpec(method="full", budget=-0.5)),
        spec(generation=pb.GenerationParams(top_p=1.5)),
    ]
    for case in cases:
        assert create_error(stub, upload(case, video=video)).code() == INVALID, case


def test_questions(stub, video, session_id):
    for question in ["", "   ", "x" * 501]:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Ask(pb.AskRequest(session_id=session_id, question=question), timeout=10))
        assert err.value.code() == INVALID
    assert create_error(stub, upload(spec(question="y" * 501), video=video)).code() == INVALID
    with pytest.raises(grpc.RpcError) as err:
        list(
            stub.Ask(
                pb.AskRequest(session_id=session_id, question="q", generation=pb.GenerationParams(max_new_tokens=5000)),
                timeout=10,
            )
        )
    assert err.value.code() == EXHAUSTED


def test_unknown_session(stub):
    for session in ["0123456789abcdef", "not/a valid id!", "a" * 300]:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Ask(pb.AskRequest(session_id=session, question="hello?"), timeout=10))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        for call in (stub.GetSession, stub.DeleteSession):
            request = (pb.GetSessionRequest if call is stub.GetSession else pb.DeleteSessionRequest)(session_id=session)
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSession(pb.GetSessionRequest(session_id=""), timeout=10)
    assert err.value.code() == INVALID


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def test_cancel_mid_answer_stops_decoding(server, stub, session_id):
    engine = server.engine
    before = stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=10)
    cancelled, generated = engine.counters["turns_cancelled"], engine.counters["generated_tokens"]
    long = pb.AskRequest(
        session_id=session_id, question="tell me everything", generation=pb.GenerationParams(max_new_tokens=4000)
    )
    call = stub.Ask(long, timeout=60)
    received = 0
    for response in call:
        received += response.HasField("token")
        if received == 3:
            during = stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=10)
            call.cancel()
            break
    assert (during.turns, during.context_length, during.cache_length, during.kv_bytes) == (
        before.turns,
        before.context_length,
        before.cache_length,
        before.kv_bytes,
    ), "a turn in flight must not show in the session until it is committed"
    _wait_for(lambda: engine.counters["turns_cancelled"] == cancelled + 1)
    stopped_at = engine.counters["generated_tokens"] - generated
    assert 3 <= stopped_at < 4000
    time.sleep(0.3)
    assert engine.counters["generated_tokens"] - generated == stopped_at, "decoding went on after the cancel"
    after = stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=10)
    assert (after.turns, after.context_length, after.cache_length) == (
        before.turns,
        before.context_length,
        before.cache_length,
    ), "a cancelled turn must leave the session as it was"
    assert_still_serving(stub, session_id)


def test_deadline_expires_mid_answer(server, stub, session_id):
    engine = server.engine
    before = stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=10)
    stopped = engine.counters["turns_cancelled"] + engine.counters["turns_deadline_exceeded"]
    generated = engine.counters["generated_tokens"]
    long = pb.AskRequest(
        session_id=session_id, question="tell me everything", generation=pb.GenerationParams(max_new_tokens=4000)
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Ask(long, timeout=0.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for(lambda: engine.counters["turns_cancelled"] + engine.counters["turns_deadline_exceeded"] == stopped + 1)
    assert engine.counters["generated_tokens"] - generated < 4000
    after = stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=10)
    assert (after.turns, after.context_length) == (before.turns, before.context_length)
    assert_still_serving(stub, session_id)


def test_error_details_name_the_field(stub, video):
    error = create_error(stub, upload(spec(pruning=pb.PruningSpec(method="nope")), video=video))
    assert _field_violations(error) == ["pruning.method"]


def _field_violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "rich status details expected"
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def test_full_queue_is_resource_exhausted_with_retry_hint(server, stub, session_id):
    """Past the configured number of waiting turns, a new turn is refused, not queued forever."""
    import threading

    engine = server.engine
    video = make_video(None, frames=12, size=(64, 64), fps=6)
    other = events(stub.CreateSession(upload(spec(frames=4), video=video), timeout=60))["session"][0].session.session_id
    limit = engine.settings.max_queued_turns
    engine.settings.max_queued_turns = 1
    try:
        long = pb.AskRequest(
            session_id=session_id, question="go on", generation=pb.GenerationParams(max_new_tokens=4000)
        )
        call = stub.Ask(long, timeout=60)
        started = threading.Event()

        def consume() -> None:
            try:
                for _ in call:
                    started.set()
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=consume)
        reader.start()
        assert started.wait(30)
        with pytest.raises(grpc.RpcError) as err:  # another session: not held up by the first one's turn lock
            list(stub.Ask(pb.AskRequest(session_id=other, question="me too?"), timeout=10))
        assert err.value.code() == EXHAUSTED
        retry = [d for d in rpc_status.from_call(err.value).details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert retry, "a full queue should say when to retry"
        call.cancel()
        reader.join(10)
    finally:
        engine.settings.max_queued_turns = limit
    _wait_for(lambda: engine.queued_turns == 0)
    assert_still_serving(stub, session_id)


@pytest.mark.parametrize(
    ("reduction", "field"),
    [
        (pb.ReductionSpec(method="nope"), "pruning.reduction.method"),
        (pb.ReductionSpec(method="evs", retention=1.5), "pruning.reduction.retention"),
        (pb.ReductionSpec(method="evs", params={"threshold": 2.0}), "pruning.reduction.params.threshold"),
        (pb.ReductionSpec(method="vidcom2", params={"window": 1.0}), "pruning.reduction.params.window"),
        (pb.ReductionSpec(retention=0.5), "pruning.reduction.method"),
    ],
    ids=["unknown", "retention", "out-of-range", "unknown-param", "no-method"],
)
def test_a_bad_reduction_is_invalid_argument_naming_the_field(stub, video, reduction, field):
    error = create_error(stub, upload(spec(pruning=pb.PruningSpec(method="das", reduction=reduction)), video=video))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _field_violations(error) == [field]
