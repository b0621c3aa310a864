"""The blocking client against a real gRPC server with a scripted servicer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from videoqa.client import (
    Answer,
    FrameSampling,
    Generation,
    NotFound,
    Progress,
    Pruning,
    Session,
    SessionCreated,
    Timeouts,
    Token,
    TurnStats,
    Unavailable,
    VideoQAClient,
    VideoQAError,
    errors,
)
from videoqa.v1 import videoqa_pb2 as pb

if TYPE_CHECKING:
    from tests.client.conftest import RunningServer

# Every status code a call can fail with, and the exception class it must raise.
ERROR_CLASSES = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.OUT_OF_RANGE: errors.OutOfRange,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
    grpc.StatusCode.INTERNAL: errors.Internal,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.UNKNOWN: errors.Unknown,
}
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def client(scripted_server: RunningServer) -> Iterator[VideoQAClient]:
    with VideoQAClient(scripted_server.target, backoff=0.01, max_backoff=0.05, chunk_size=1000) as c:
        yield c


def _video(n: int = 4321) -> bytes:
    return bytes(i * 7 % 251 for i in range(n))


# --------------------------------------------------------------------------------------------
# Uploads


def test_video_bytes_are_chunked_and_reassembled(client: VideoQAClient, scripted_server: RunningServer) -> None:
    data = _video()
    session = client.create_session(
        data,
        model="m1",
        sampling=FrameSampling(num_frames=12, max_resolution=448),
        pruning=Pruning(method="snapkv", params={"window": 16}, budget=0.25),
        question="what?",
        generation=Generation(max_new_tokens=32, seed=7),
    )
    (upload,) = scripted_server.servicer.uploads
    assert upload.video == data
    assert upload.video_chunks == 5  # 4321 bytes in pieces of 1000
    assert set(upload.kinds) == {"video_chunk"}
    spec = upload.spec
    assert spec.media_kind == pb.MEDIA_KIND_VIDEO
    assert spec.total_bytes == len(data)
    assert spec.model == "m1"
    assert spec.sampling.WhichOneof("rate") == "num_frames"
    assert spec.sampling.num_frames == 12 and spec.sampling.max_resolution == 448
    assert spec.pruning.method == "snapkv" and dict(spec.pruning.params) == {"window": 16.0}
    assert spec.pruning.budget == pytest.approx(0.25)
    assert spec.question == "what?"
    assert spec.generation.max_new_tokens == 32 and spec.generation.seed == 7
    assert session.info.pruning == Pruning(method="snapkv", params={"window": 16.0}, budget=0.25)
    assert session.info.sampling == FrameSampling(num_frames=12, max_resolution=448)


def test_video_file_is_streamed_and_progress_reported(
    client: VideoQAClient, scripted_server: RunningServer, tmp_path: Path
) -> None:
    data = _video(2500)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    progress: list[Progress] = []
    uploaded: list[tuple[int, int]] = []
    session = client.create_session(path, on_progress=progress.append, on_upload=lambda s, t: uploaded.append((s, t)))
    (upload,) = scripted_server.servicer.uploads
    assert upload.video == data and upload.video_chunks == 3
    assert upload.spec.total_bytes == 2500
    assert not upload.spec.HasField("sampling") and not upload.spec.HasField("generation")
    assert progress == scripted_server.servicer.stage_events
    assert uploaded[0] == (0, 2500) and uploaded[-1] == (2500, 2500)
    assert session.first_answer is None
    assert session.info.media_kind == "video"


def test_images_arrive_as_parts_with_their_index(
    client: VideoQAClient, scripted_server: RunningServer, tmp_path: Path
) -> None:
    images = [b"a" * 2500, b"b" * 10, b"c" * 1000]
    paths = []
    for i, data in enumerate(images):
        paths.append(tmp_path / f"frame{i}.png")
        paths[-1].write_bytes(data)
    session = client.create_session(paths, image_fps=2.0, sampling=FrameSampling(fps=1.5))
    (upload,) = scripted_server.servicer.uploads
    assert upload.images == images
    assert upload.image_parts == [0, 0, 0, 1, 2]
    assert upload.spec.media_kind == pb.MEDIA_KIND_IMAGES
    assert upload.spec.total_bytes == sum(map(len, images))
    assert upload.spec.image_fps == 2.0
    assert upload.spec.sampling.WhichOneof("rate") == "fps"
    assert session.info.media_kind == "images"
    assert len(session.info.frames.indices) == 3


def test_image_directory_and_bytes(client: VideoQAClient, scripted_server: RunningServer, tmp_path: Path) -> None:
    for name, data in [("f10.jpg", b"10"), ("f2.jpg", b"2"), ("f1.png", b"1"), ("notes.txt", b"x")]:
        (tmp_path / name).write_bytes(data)
    client.create_session(tmp_path)
    client.create_session([b"x" * 1500, b"y"])
    client.create_session(tmp_path / "f1.png", images=True)
    dir_upload, bytes_upload, single = scripted_server.servicer.uploads
    assert dir_upload.images == [b"1", b"2", b"10"]  # natural order, non-images skipped
    assert bytes_upload.images == [b"x" * 1500, b"y"] and bytes_upload.image_parts == [0, 0, 1]
    assert single.images == [b"1"] and single.spec.media_kind == pb.MEDIA_KIND_IMAGES


def test_missing_file_fails_before_any_call(
    client: VideoQAClient, scripted_server: RunningServer, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        client.create_session(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="no image files"):
        client.create_session(tmp_path)
    assert scripted_server.servicer.uploads == []


# --------------------------------------------------------------------------------------------
# Events and sessions


def test_stream_create_session_yields_every_event_in_order(
    client: VideoQAClient, scripted_server: RunningServer
) -> None:
    events = list(client.stream_create_session(b"video", question="why?"))
    n = len(scripted_server.servicer.stage_events)
    assert events[:n] == scripted_server.servicer.stage_events
    assert isinstance(events[n], SessionCreated)
    tokens = events[n + 1 : -1]
    assert all(isinstance(t, Token) for t in tokens)
    assert [t.index for t in tokens] == [0, 1, 2, 3]  # type: ignore[union-attr]
    stats = events[-1]
    assert isinstance(stats, TurnStats)
    assert stats.session_id == events[n].session.session_id  # type: ignore[union-attr]
    assert stats.finish_reason == "stop" and stats.turn == 1
    assert stats.timings.time_to_first_token_seconds == 0.125


def test_first_answer_and_follow_up_questions(client: VideoQAClient, scripted_server: RunningServer) -> None:
    session = client.create_session(b"video", question="first?")
    assert isinstance(session, Session)
    assert isinstance(session.first_answer, Answer)
    assert session.first_answer.text == "Answer to: first?"
    assert [t.token_id for t in session.first_answer.tokens] == [100, 101, 102, 103]

    events = list(session.ask("second?", max_new_tokens=5, seed=3))
    assert "".join(e.text for e in events if isinstance(e, Token)) == "Answer to: second?"
    assert isinstance(events[-1], TurnStats) and events[-1].turn == 2

    answer = session.ask_text("third?", Generation(temperature=0.5, top_p=0.9), seed=11)
    assert answer.text == "Answer to: third?" and answer.stats is not None and answer.stats.turn == 3
    second, third = scripted_server.servicer.asks
    assert second.generation.max_new_tokens == 5 and second.generation.seed == 3
    assert third.generation.temperature == pytest.approx(0.5) and third.generation.seed == 11

    assert session.refresh().turns == 3
    assert client.session(session.id).info == session.info
    session.delete()
    with pytest.raises(NotFound):
        client.get_session(session.id)


def test_session_context_manager_deletes(client: VideoQAClient, scripted_server: RunningServer) -> None:
    with client.create_session(b"video") as session:
        assert client.get_session(session.id).session_id == session.id
    assert scripted_server.servicer.deleted == [session.id]


def test_deployment_descriptions(client: VideoQAClient) -> None:
    models = client.list_models()
    assert [m.id for m in models] == ["qwen2.5-vl-3b", "llava-ov-0.5b"] and models[0].is_default
    methods = client.list_methods()
    assert methods[1].name == "snapkv" and methods[1].params[0].integer and methods[1].params[0].max == 512
    info = client.server_info()
    assert info.api_version == "v1" and info.limits.max_frames == 256
    assert info.runtime_versions == {"torch": "2.9.0"}


def test_no_session_event_is_an_error(client: VideoQAClient, scripted_server: RunningServer) -> None:
    scripted_server.servicer.skip_session_event = True
    with pytest.raises(errors.Unknown, match="without creating a session"):
        client.create_session(b"video")


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("code", list(ERROR_CLASSES), ids=lambda c: c.name)
def test_unary_status_maps_to_exception(
    client: VideoQAClient, scripted_server: RunningServer, code: grpc.StatusCode
) -> None:
    scripted_server.servicer.fail["GetServerInfo"] = [code] * 10
    with pytest.raises(ERROR_CLASSES[code]) as info:
        client.server_info()
    assert isinstance(info.value, VideoQAError)
    assert info.value.code == code
    assert info.value.details == f"scripted {code.name}"


@pytest.mark.parametrize("code", list(ERROR_CLASSES), ids=lambda c: c.name)
def test_mid_stream_status_maps_to_exception(
    client: VideoQAClient, scripted_server: RunningServer, code: grpc.StatusCode
) -> None:
    session = client.create_session(b"video")
    scripted_server.servicer.fail_mid["Ask"] = code
    received = []
    with pytest.raises(ERROR_CLASSES[code]) as info:
        for event in session.ask("q"):
            received.append(event)
    assert info.value.code == code and "mid-stream" in info.value.details
    assert len(received) == 1  # the first token came before the error
    assert scripted_server.servicer.attempts["Ask"] == 1  # never retried once an event arrived


def test_mid_upload_stream_error(client: VideoQAClient, scripted_server: RunningServer) -> None:
    scripted_server.servicer.fail_mid["CreateSession"] = UNAVAILABLE
    with pytest.raises(Unavailable):
        client.create_session(b"video")
    assert scripted_server.servicer.attempts["CreateSession"] == 1


def test_unknown_session_is_not_found(client: VideoQAClient) -> None:
    with pytest.raises(NotFound, match="no session nope"):
        list(client.ask("nope", "q"))
    with pytest.raises(NotFound):
        client.delete_session("nope")
    with pytest.raises(NotFound):
        client.session("nope")


# --------------------------------------------------------------------------------------------
# Retries and deadlines


def test_unary_retries_unavailable_then_succeeds(client: VideoQAClient, scripted_server: RunningServer) -> None:
    scripted_server.servicer.fail["ListModels"] = [UNAVAILABLE, UNAVAILABLE]
    assert len(client.list_models()) == 2
    assert scripted_server.servicer.attempts["ListModels"] == 3


def test_unary_gives_up_after_retries(client: VideoQAClient, scripted_server: RunningServer) -> None:
    scripted_server.servicer.fail["ListModels"] = [UNAVAILABLE] * 10
    with pytest.raises(Unavailable):
        client.list_models()
    assert scripted_server.servicer.attempts["ListModels"] == 4  # 1 + retries=3


def test_other_codes_are_not_retried(client: VideoQAClient, scripted_server: RunningServer) -> None:
    scripted_server.servicer.fail["ListModels"] = [grpc.StatusCode.INVALID_ARGUMENT, None]
    with pytest.raises(errors.InvalidArgument):
        client.list_models()
    assert scripted_server.servicer.attempts["ListModels"] == 1


def test_upload_is_resent_from_the_start_on_unavailable(client: VideoQAClient, scripted_server: RunningServer) -> None:
    data = _video(3000)
    scripted_server.servicer.fail["CreateSession"] = [UNAVAILABLE, UNAVAILABLE]
    session = client.create_session(data, question="q")
    assert scripted_server.servicer.attempts["CreateSession"] == 3
    assert [u.video for u in scripted_server.servicer.uploads] == [data] * 3
    assert session.first_answer is not None and session.first_answer.text == "Answer to: q"


def test_ask_retries_before_the_first_event(client: VideoQAClient, scripted_server: RunningServer) -> None:
    session = client.create_session(b"video")
    scripted_server.servicer.fail["Ask"] = [UNAVAILABLE]
    assert session.ask_text("q").text == "Answer to: q"
    assert scripted_server.servicer.attempts["Ask"] == 2


def test_stream_not_retried_on_other_codes(client: VideoQAClient, scripted_server: RunningServer) -> None:
    scripted_server.servicer.fail["CreateSession"] = [grpc.StatusCode.RESOURCE_EXHAUSTED, None]
    with pytest.raises(errors.ResourceExhausted):
        client.create_session(b"video")
    assert scripted_server.servicer.attempts["CreateSession"] == 1


def test_retry_pushback_is_honoured(scripted_server: RunningServer) -> None:
    scripted_server.servicer.fail["ListModels"] = [UNAVAILABLE]
    scripted_server.servicer.pushback_ms = "200"
    with VideoQAClient(scripted_server.target, backoff=0.0) as c:
        started = time.monotonic()
        c.list_models()
        assert time.monotonic() - started >= 0.2
    scripted_server.servicer.fail["ListModels"] = [UNAVAILABLE, None]
    scripted_server.servicer.pushback_ms = "-1"  # the server says: do not retry
    with VideoQAClient(scripted_server.target, backoff=0.0) as c, pytest.raises(Unavailable):
        c.list_models()


def test_retries_stop_at_the_deadline(scripted_server: RunningServer) -> None:
    scripted_server.servicer.fail["ListModels"] = [UNAVAILABLE] * 10
    with VideoQAClient(scripted_server.target, backoff=5.0, max_backoff=5.0) as c:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            c.list_models(timeout=1.0)
        assert time.monotonic() - started < 1.0
    assert scripted_server.servicer.attempts["ListModels"] == 1


def test_default_deadlines_are_sent(client: VideoQAClient, scripted_server: RunningServer) -> None:
    session = client.create_session(b"video")
    list(session.ask("q"))
    session.refresh()
    remaining = scripted_server.servicer.time_remaining
    # gRPC encodes timeouts with limited precision, hence the margin above the default.
    assert 590 < remaining["CreateSession"][0] <= 602
    assert 290 < remaining["Ask"][0] <= 302
    assert 25 < remaining["GetSession"][0] <= 31


def test_deadlines_overridable_per_client_and_per_call(scripted_server: RunningServer) -> None:
    with VideoQAClient(scripted_server.target, timeout=Timeouts(unary=5, create_session=50, ask=20)) as c:
        session = c.create_session(b"video")
        list(session.ask("q"))
        list(session.ask("q", timeout=2))
        c.server_info()
        c.server_info(timeout=1.5)
    with VideoQAClient(scripted_server.target, timeout=7) as c:
        c.server_info()
    remaining = scripted_server.servicer.time_remaining
    assert 45 < remaining["CreateSession"][0] <= 51
    assert 15 < remaining["Ask"][0] <= 21 and remaining["Ask"][1] <= 2.1
    per_client, per_call, number = remaining["GetServerInfo"]
    assert 4 < per_client <= 5.1 and 1 < per_call <= 1.6 and 6 < number <= 7.1


def test_deadline_exceeded_mid_stream(client: VideoQAClient, scripted_server: RunningServer) -> None:
    session = client.create_session(b"video")
    scripted_server.servicer.token_delay = 0.3
    with pytest.raises(errors.DeadlineExceeded):
        list(session.ask("q", timeout=0.5))


def test_metadata_is_sent(scripted_server: RunningServer) -> None:
    with VideoQAClient(scripted_server.target, metadata={"Authorization": "Bearer t0k", "x-request-id": "r1"}) as c:
        c.server_info()
        list(c.stream_create_session(b"v"))
    for method in ("GetServerInfo", "CreateSession"):
        md = scripted_server.servicer.metadata[method][0]
        assert md["authorization"] == "Bearer t0k" and md["x-request-id"] == "r1"


def test_closing_a_stream_cancels_the_call(client: VideoQAClient, scripted_server: RunningServer) -> None:
    session = client.create_session(b"video")
    scripted_server.servicer.token_delay = 5.0
    events = session.ask("q")
    assert isinstance(next(events), Token)
    events.close()  # type: ignore[attr-defined]
    assert scripted_server.servicer.cancelled.wait(2.0)


def test_media_read_error_surfaces_as_itself(client: VideoQAClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from videoqa.client import _media

    def broken(self: _media.Media, chunk_size: int) -> Iterator[tuple[int, bytes]]:
        yield 0, b"abc"
        raise OSError("disk went away")

    monkeypatch.setattr(_media.Media, "chunks", broken)
    with pytest.raises(OSError, match="disk went away"):
        client.create_session(b"video")


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        FrameSampling(num_frames=4, fps=1.0)
    with pytest.raises(ValueError):
        VideoQAClient("127.0.0.1:1", chunk_size=0)
    with pytest.raises(ValueError):
        VideoQAClient("127.0.0.1:1", retries=-1)
