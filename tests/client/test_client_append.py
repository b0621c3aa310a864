"""AppendMedia from the SDK (sync and asyncio) against the scripted server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from videoqa.client import (
    AsyncSession,
    AsyncVideoQAClient,
    FrameSampling,
    NotFound,
    Progress,
    Pruning,
    Session,
    SessionCreated,
    SessionInfo,
    Timeouts,
    Unavailable,
    VideoQAClient,
    errors,
)
from videoqa.v1 import videoqa_pb2 as pb

if TYPE_CHECKING:
    from tests.client.conftest import RunningServer

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def client(scripted_server: RunningServer) -> Iterator[VideoQAClient]:
    with VideoQAClient(scripted_server.target, backoff=0.01, max_backoff=0.05, chunk_size=1000) as c:
        yield c


@pytest.fixture
def session(client: VideoQAClient) -> Session:
    return client.create_session(b"first part", pruning=Pruning(method="snapkv", budget=0.5, max_visual_tokens=64))


def _segment(n: int = 2500) -> bytes:
    return bytes(i * 13 % 253 for i in range(n))


# --------------------------------------------------------------------------------------------
# Sync


def test_append_streams_spec_then_media_and_updates_info(
    client: VideoQAClient, session: Session, scripted_server: RunningServer, tmp_path: Path
) -> None:
    data = _segment()
    path = tmp_path / "part2.mp4"
    path.write_bytes(data)
    progress: list[Progress] = []
    uploaded: list[tuple[int, int]] = []
    before = session.info
    assert before.segments == 1 and before.pruning.max_visual_tokens == 64

    info = session.append(
        path,
        sampling=FrameSampling(num_frames=4, max_resolution=336),
        on_progress=progress.append,
        on_upload=lambda sent, total: uploaded.append((sent, total)),
    )

    (append,) = scripted_server.servicer.appends
    spec = append.spec
    assert isinstance(spec, pb.AppendSpec)
    assert spec.session_id == session.id
    assert spec.media_kind == pb.MEDIA_KIND_VIDEO and spec.total_bytes == len(data)
    assert spec.sampling.num_frames == 4 and spec.sampling.max_resolution == 336
    assert append.video == data and append.video_chunks == 3 and set(append.kinds) == {"video_chunk"}
    assert uploaded[0] == (0, len(data)) and uploaded[-1] == (len(data), len(data))
    # Every progress event, the intermediate prefill fraction included, in order.
    assert progress == scripted_server.servicer.append_events
    assert [p.fraction for p in progress if p.stage == "prefill"] == [0.5, 1.0]
    # The returned info is the session as it now is, and the Session object holds it.
    assert session.info is info
    assert info.segments == 2 and info.session_id == session.id
    assert len(info.frames.indices) == 8 + 4
    assert info.frames.timestamps[:8] == before.frames.timestamps
    assert info.frames.timestamps[8:] == [8.0, 9.0, 10.0, 11.0]  # the session clock goes on
    assert client.get_session(session.id) == info
    assert scripted_server.servicer.uploads[0].spec.pruning.max_visual_tokens == 64


def test_append_images_and_client_method(
    client: VideoQAClient, session: Session, scripted_server: RunningServer, tmp_path: Path
) -> None:
    images = [b"a" * 1500, b"b" * 10]
    paths = []
    for i, data in enumerate(images):
        paths.append(tmp_path / f"frame{i}.png")
        paths[-1].write_bytes(data)
    info = session.append(images=paths, image_fps=2.0)
    assert info.segments == 2 and len(info.frames.indices) == 8 + 2
    info = client.append_media(session.id, [b"xyz"], sampling=FrameSampling(fps=1.5))
    assert info.segments == 3 and session.info.segments == 2  # the client method leaves the handle alone
    first, second = scripted_server.servicer.appends
    assert first.images == images and first.image_parts == [0, 0, 1]
    assert first.spec.media_kind == pb.MEDIA_KIND_IMAGES and first.spec.image_fps == 2.0
    assert first.spec.total_bytes == sum(map(len, images)) and not first.spec.HasField("sampling")
    assert second.images == [b"xyz"] and second.spec.sampling.fps == 1.5
    assert session.refresh().segments == 3


def test_stream_append_media_yields_every_event(
    client: VideoQAClient, session: Session, scripted_server: RunningServer
) -> None:
    events = list(client.stream_append_media(session.id, b"more video"))
    assert events[:-1] == scripted_server.servicer.append_events
    last = events[-1]
    assert isinstance(last, SessionCreated) and last.session.segments == 2
    assert scripted_server.servicer.appends[0].video == b"more video"


def test_append_arguments_checked_before_any_call(
    session: Session, scripted_server: RunningServer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="one of"):
        session.append()
    with pytest.raises(ValueError, match="one of"):
        session.append(b"video", images=[b"img"])
    with pytest.raises(FileNotFoundError):
        session.append(tmp_path / "missing.mp4")
    assert scripted_server.servicer.appends == [] and scripted_server.servicer.attempts["AppendMedia"] == 0


def test_append_retries_unavailable_before_any_event_resending_the_upload(
    session: Session, scripted_server: RunningServer
) -> None:
    data = _segment(3000)
    scripted_server.servicer.fail["AppendMedia"] = [UNAVAILABLE, UNAVAILABLE]
    progress: list[Progress] = []
    info = session.append(data, on_progress=progress.append)
    assert scripted_server.servicer.attempts["AppendMedia"] == 3
    assert [a.video for a in scripted_server.servicer.appends] == [data] * 3
    assert [a.spec.session_id for a in scripted_server.servicer.appends] == [session.id] * 3
    assert progress == scripted_server.servicer.append_events  # the failed attempts sent no event
    assert info.segments == 2


def test_append_gives_up_after_retries(client: VideoQAClient, session: Session, scripted_server: RunningServer) -> None:
    scripted_server.servicer.fail["AppendMedia"] = [UNAVAILABLE] * 10
    with pytest.raises(Unavailable):
        session.append(b"video")
    assert scripted_server.servicer.attempts["AppendMedia"] == 4  # 1 + retries=3
    assert session.info.segments == 1


def test_append_not_retried_after_an_event(session: Session, scripted_server: RunningServer) -> None:
    scripted_server.servicer.fail_mid["AppendMedia"] = UNAVAILABLE
    progress: list[Progress] = []
    before = session.info
    with pytest.raises(Unavailable, match="mid-stream"):
        session.append(b"video", on_progress=progress.append)
    assert scripted_server.servicer.attempts["AppendMedia"] == 1
    assert progress == scripted_server.servicer.append_events[:1]
    assert session.info is before  # not updated by a failed append


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),  # a one-shot pruning method
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),  # over the session's frame limit
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
    ],
    ids=lambda x: getattr(x, "name", ""),
)
def test_append_errors_are_typed_and_not_retried(
    session: Session, scripted_server: RunningServer, code: grpc.StatusCode, error: type[errors.VideoQAError]
) -> None:
    scripted_server.servicer.fail["AppendMedia"] = [code, None]
    with pytest.raises(error):
        session.append(b"video")
    assert scripted_server.servicer.attempts["AppendMedia"] == 1


def test_append_to_unknown_session_is_not_found(client: VideoQAClient) -> None:
    with pytest.raises(NotFound, match="no session nope"):
        client.append_media("nope", b"video")


def test_append_without_session_event_is_an_error(session: Session, scripted_server: RunningServer) -> None:
    scripted_server.servicer.skip_session_event = True
    with pytest.raises(errors.Unknown, match="AppendMedia"):
        session.append(b"video")


def test_append_deadlines(scripted_server: RunningServer) -> None:
    with VideoQAClient(scripted_server.target) as c:
        session = c.create_session(b"video")
        session.append(b"more")
        session.append(b"more", timeout=3)
    with VideoQAClient(scripted_server.target, timeout=Timeouts(append_media=40)) as c:
        c.append_media(session.id, b"more")
    with VideoQAClient(scripted_server.target, timeout=7) as c:
        c.append_media(session.id, b"more")
    default, per_call, per_client, number = scripted_server.servicer.time_remaining["AppendMedia"]
    assert 590 < default <= 602 and per_call <= 3.1 and 35 < per_client <= 40.1 and 6 < number <= 7.1


# --------------------------------------------------------------------------------------------
# asyncio


def _run(target: str, scenario: Any) -> Any:
    async def main() -> Any:
        async with AsyncVideoQAClient(target, backoff=0.01, max_backoff=0.05, chunk_size=1000) as c:
            return await scenario(c)

    return asyncio.run(main())


def test_async_append(scripted_server: RunningServer, tmp_path: Path) -> None:
    data = _segment(2100)
    (tmp_path / "b.png").write_bytes(b"B" * 1200)
    (tmp_path / "a.png").write_bytes(b"A")
    progress: list[Progress] = []

    async def on_progress(event: Progress) -> None:  # a coroutine callback is awaited
        progress.append(event)

    async def scenario(c: AsyncVideoQAClient) -> tuple[AsyncSession, SessionInfo, list]:
        session = await c.create_session(b"video")
        info = await session.append(data, sampling=FrameSampling(num_frames=3), on_progress=on_progress)
        assert session.info is info
        await session.append(images=tmp_path)
        events = [e async for e in c.stream_append_media(session.id, b"third")]
        assert (await session.refresh()).segments == 4
        return session, info, events

    session, info, events = _run(scripted_server.target, scenario)
    video, images, third = scripted_server.servicer.appends
    assert video.spec.session_id == session.id and video.video == data and video.video_chunks == 3
    assert video.spec.sampling.num_frames == 3 and video.spec.total_bytes == len(data)
    assert images.images == [b"A", b"B" * 1200] and images.spec.media_kind == pb.MEDIA_KIND_IMAGES
    assert third.video == b"third"
    assert progress == scripted_server.servicer.append_events
    assert info.segments == 2 and info.frames.timestamps[8:] == [8.0, 9.0, 10.0]
    assert events[:-1] == scripted_server.servicer.append_events and isinstance(events[-1], SessionCreated)
    assert events[-1].session.segments == 4


def test_async_append_retries(scripted_server: RunningServer) -> None:
    data = b"0123456789" * 300

    async def scenario(c: AsyncVideoQAClient) -> None:
        session = await c.create_session(b"video")
        scripted_server.servicer.fail["AppendMedia"] = [UNAVAILABLE, UNAVAILABLE]
        assert (await session.append(data)).segments == 2
        scripted_server.servicer.fail["AppendMedia"] = [grpc.StatusCode.RESOURCE_EXHAUSTED, None]
        with pytest.raises(errors.ResourceExhausted):
            await session.append(data)
        scripted_server.servicer.fail_mid["AppendMedia"] = UNAVAILABLE
        with pytest.raises(Unavailable):
            await session.append(data)
        assert session.info.segments == 2
        with pytest.raises(ValueError):
            await session.append()

    _run(scripted_server.target, scenario)
    # 3 attempts for the first append, then one each: never retried after an event or another code.
    assert scripted_server.servicer.attempts["AppendMedia"] == 3 + 1 + 1
    assert [a.video for a in scripted_server.servicer.appends] == [data] * 5
