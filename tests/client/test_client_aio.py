"""The asyncio client against the same real gRPC server (run with ``asyncio.run``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
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
    SessionCreated,
    Token,
    TurnStats,
    Unavailable,
    errors,
)
from videoqa.v1 import videoqa_pb2 as pb

if TYPE_CHECKING:
    from tests.client.conftest import RunningServer

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
Scenario = Callable[[AsyncVideoQAClient], Awaitable[Any]]
Runner = Callable[[Scenario], Any]
# Every status code but OK, with the class named after it (INVALID_ARGUMENT -> InvalidArgument).
CODES = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]


def error_class(code: grpc.StatusCode) -> type[errors.VideoQAError]:
    return getattr(errors, "".join(word.title() for word in code.name.split("_")))


@pytest.fixture
def run(scripted_server: RunningServer) -> Iterator[Runner]:
    """Runs ``scenario(client)`` in a fresh event loop with a fresh async client."""

    def runner(scenario: Scenario) -> Any:
        async def main() -> Any:
            async with AsyncVideoQAClient(scripted_server.target, backoff=0.01, max_backoff=0.05, chunk_size=1000) as c:
                return await scenario(c)

        return asyncio.run(main())

    yield runner


def test_upload_events_and_first_answer(run: Runner, scripted_server: RunningServer) -> None:
    data = bytes(range(256)) * 10
    progress: list[Progress] = []

    async def on_progress(event: Progress) -> None:  # a coroutine callback is awaited
        progress.append(event)

    async def scenario(c: AsyncVideoQAClient) -> AsyncSession:
        return await c.create_session(
            data,
            sampling=FrameSampling(num_frames=4),
            pruning=Pruning(budget=0.5),
            question="first?",
            on_progress=on_progress,
        )

    session = run(scenario)
    assert isinstance(session, AsyncSession)
    (upload,) = scripted_server.servicer.uploads
    assert upload.video == data and upload.video_chunks == 3
    assert upload.spec.total_bytes == len(data) and upload.spec.sampling.num_frames == 4
    assert progress == scripted_server.servicer.stage_events
    assert session.first_answer is not None and session.first_answer.text == "Answer to: first?"
    assert session.first_answer.stats is not None and session.first_answer.stats.turn == 1


def test_images_and_stream(run: Runner, scripted_server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "b.png").write_bytes(b"B" * 1200)
    (tmp_path / "a.png").write_bytes(b"A")

    async def scenario(c: AsyncVideoQAClient) -> list:
        return [e async for e in c.stream_create_session(tmp_path, question="q")]

    events = run(scenario)
    (upload,) = scripted_server.servicer.uploads
    assert upload.images == [b"A", b"B" * 1200] and upload.image_parts == [0, 1, 1]
    assert upload.spec.media_kind == pb.MEDIA_KIND_IMAGES
    n = len(scripted_server.servicer.stage_events)
    assert isinstance(events[n], SessionCreated)
    assert [type(e) for e in events[n + 1 :]] == [Token] * 4 + [TurnStats]


def test_session_methods(run: Runner, scripted_server: RunningServer) -> None:
    async def scenario(c: AsyncVideoQAClient) -> None:
        session = await c.create_session(b"video")
        tokens = [e.text async for e in session.ask("a?", seed=1) if isinstance(e, Token)]
        assert "".join(tokens) == "Answer to: a?"
        answer = await session.ask_text("b?", max_new_tokens=3)
        assert answer.text == "Answer to: b?" and answer.stats is not None and answer.stats.turn == 2
        assert (await session.refresh()).turns == 2
        assert (await c.session(session.id)).info == session.info
        assert len(await c.list_models()) == 2
        assert (await c.list_methods())[1].name == "snapkv"
        assert (await c.server_info()).default_model == "qwen2.5-vl-3b"
        async with session:
            pass
        with pytest.raises(NotFound):
            await c.get_session(session.id)

    run(scenario)
    first, second = scripted_server.servicer.asks
    assert first.generation.seed == 1 and second.generation.max_new_tokens == 3
    assert len(scripted_server.servicer.deleted) == 1


@pytest.mark.parametrize("code", CODES, ids=lambda c: c.name)
def test_status_codes(run: Runner, scripted_server: RunningServer, code: grpc.StatusCode) -> None:
    async def scenario(c: AsyncVideoQAClient) -> None:
        scripted_server.servicer.fail["GetSession"] = [code] * 10
        with pytest.raises(error_class(code)) as unary:
            await c.get_session("x")
        assert unary.value.code == code
        session = await c.create_session(b"video")
        scripted_server.servicer.fail_mid["Ask"] = code
        received = []
        with pytest.raises(error_class(code)) as mid:
            async for event in session.ask("q"):
                received.append(event)
        assert mid.value.details == f"scripted mid-stream {code.name}"
        assert len(received) == 1

    run(scenario)
    assert scripted_server.servicer.attempts["Ask"] == 1


def test_retries(run: Runner, scripted_server: RunningServer) -> None:
    async def scenario(c: AsyncVideoQAClient) -> None:
        scripted_server.servicer.fail["ListModels"] = [UNAVAILABLE, UNAVAILABLE]
        await c.list_models()
        scripted_server.servicer.fail["ListMethods"] = [grpc.StatusCode.INVALID_ARGUMENT, None]
        with pytest.raises(errors.InvalidArgument):
            await c.list_methods()
        scripted_server.servicer.fail["CreateSession"] = [UNAVAILABLE, UNAVAILABLE]
        session = await c.create_session(b"0123456789" * 300)
        scripted_server.servicer.fail["Ask"] = [UNAVAILABLE] * 10
        with pytest.raises(Unavailable):
            await session.ask_text("q")
        scripted_server.servicer.fail["Ask"] = []
        scripted_server.servicer.fail_mid["Ask"] = UNAVAILABLE
        with pytest.raises(Unavailable):
            await session.ask_text("q")

    run(scenario)
    attempts = scripted_server.servicer.attempts
    assert attempts["ListModels"] == 3 and attempts["ListMethods"] == 1 and attempts["CreateSession"] == 3
    assert [u.video for u in scripted_server.servicer.uploads] == [b"0123456789" * 300] * 3
    assert attempts["Ask"] == 4 + 1  # 1 + 3 retries, then one call that failed after an event


def test_default_deadlines(run: Runner, scripted_server: RunningServer) -> None:
    async def scenario(c: AsyncVideoQAClient) -> None:
        session = await c.create_session(b"video")
        await session.ask_text("q")
        await session.ask_text("q", timeout=3)
        await session.refresh()

    run(scenario)
    remaining = scripted_server.servicer.time_remaining
    assert 590 < remaining["CreateSession"][0] <= 602
    assert 290 < remaining["Ask"][0] <= 302 and remaining["Ask"][1] <= 3.1
    assert 25 < remaining["GetSession"][0] <= 31


def test_aclose_cancels_the_call(run: Runner, scripted_server: RunningServer) -> None:
    async def scenario(c: AsyncVideoQAClient) -> None:
        session = await c.create_session(b"video")
        scripted_server.servicer.token_delay = 5.0
        stream = session.ask("q")
        assert isinstance(await stream.__anext__(), Token)
        await stream.aclose()  # type: ignore[attr-defined]

    run(scenario)
    assert scripted_server.servicer.cancelled.wait(2.0)


def test_task_cancellation_cancels_the_call(run: Runner, scripted_server: RunningServer) -> None:
    async def scenario(c: AsyncVideoQAClient) -> None:
        session = await c.create_session(b"video")
        scripted_server.servicer.token_delay = 5.0
        task = asyncio.create_task(session.ask_text("q"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario)
    assert scripted_server.servicer.cancelled.wait(2.0)


def test_missing_file(run: Runner, tmp_path: Path) -> None:
    async def scenario(c: AsyncVideoQAClient) -> None:
        with pytest.raises(FileNotFoundError):
            await c.create_session(tmp_path / "missing.mp4")

    run(scenario)


def test_media_read_error_surfaces_as_itself(run: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    from videoqa.client import _media

    def broken(self: _media.Media, chunk_size: int) -> Iterator[tuple[int, bytes]]:
        yield 0, b"abc"
        raise OSError("disk went away")

    monkeypatch.setattr(_media.Media, "chunks", broken)

    async def scenario(c: AsyncVideoQAClient) -> None:
        with pytest.raises(OSError, match="disk went away"):
            await c.create_session(b"video")

    run(scenario)
