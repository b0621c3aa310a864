"""asyncio client of the ``videoqa.v1.VideoQA`` service, on ``grpc.aio``.

Same surface as :class:`videoqa.client.VideoQAClient`: unary calls are coroutines, streams are
async iterators. Example::

    async with AsyncVideoQAClient("localhost:50051") as client:
        session = await client.create_session("clip.mp4")
        async for event in session.ask("What happens first?"):
            ...
        await session.delete()

The channel is opened on the first call, in the running event loop; use a client from one
event loop only.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, suppress
from types import TracebackType
from typing import Any, TypeVar

import grpc

from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc as pb_grpc

from . import convert
from ._common import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_TARGET,
    Deadline,
    Metadata,
    RetryPolicy,
    UploadRequests,
    append_source,
    build_append_spec,
    build_ask,
    build_spec,
    check_chunk_size,
    merge_generation,
    normalize_metadata,
    resolve_timeouts,
)
from ._common import channel_options as _channel_options
from ._media import Media, MediaSource, UploadCallback
from .errors import NotFound, Unknown, from_rpc_error
from .types import (
    Answer,
    Event,
    FrameSampling,
    Generation,
    MethodInfo,
    ModelInfo,
    Progress,
    Pruning,
    ServerInfo,
    SessionCreated,
    SessionInfo,
    Timeouts,
)

__all__ = ["AsyncSession", "AsyncVideoQAClient"]

_R = TypeVar("_R")
#: Receives each Progress event; may be a plain function or a coroutine function.
AsyncProgressCallback = Callable[[Progress], Any]


class AsyncVideoQAClient:
    """asyncio client of a videoqa server; arguments as for :class:`VideoQAClient`."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | Timeouts | None = None,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Metadata | None = None,
        api_key: str | None = None,
        channel_options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self.target = target
        self.timeouts = resolve_timeouts(timeout)
        self.retry = RetryPolicy(retries=retries, backoff=backoff, max_backoff=max_backoff)
        self.chunk_size = check_chunk_size(chunk_size)
        self._metadata = normalize_metadata(metadata, api_key) or None
        self._credentials = credentials
        self._options = _channel_options(channel_options)
        self._channel: grpc.aio.Channel | None = None
        self._stub_: pb_grpc.VideoQAStub | None = None

    @property
    def _stub(self) -> pb_grpc.VideoQAStub:
        if self._stub_ is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            self._stub_ = pb_grpc.VideoQAStub(self._channel)
        return self._stub_

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub_ = None

    async def __aenter__(self) -> AsyncVideoQAClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncVideoQAClient({self.target!r})"

    # ----------------------------------------------------------------------------------------
    # Sessions

    def stream_create_session(
        self,
        media: MediaSource,
        *,
        images: bool = False,
        model: str = "",
        sampling: FrameSampling | None = None,
        pruning: Pruning | None = None,
        question: str = "",
        generation: Generation | None = None,
        image_fps: float = 0.0,
        timeout: float | None = None,
        on_upload: UploadCallback | None = None,
    ) -> AsyncIterator[Event]:
        """Uploads ``media`` and yields the server's events as they come (an async iterator).

        See :meth:`VideoQAClient.stream_create_session`. Files are checked here; the call
        starts on the first ``__anext__``. Closing the iterator early (``aclose``) cancels it.
        """
        loaded = Media.load(media, images=images)
        spec = build_spec(
            loaded,
            model=model,
            sampling=sampling,
            pruning=pruning,
            question=question,
            generation=generation,
            image_fps=image_fps,
        )
        deadline_s = timeout if timeout is not None else self.timeouts.create_session

        def start(remaining: float) -> tuple[Any, UploadRequests]:
            requests = UploadRequests(loaded.requests(spec, self.chunk_size, on_upload))
            call = self._stub.CreateSession(requests, timeout=remaining, metadata=self._metadata)
            return call, requests

        return self._stream(start, deadline_s)

    async def create_session(
        self,
        media: MediaSource,
        *,
        images: bool = False,
        model: str = "",
        sampling: FrameSampling | None = None,
        pruning: Pruning | None = None,
        question: str = "",
        generation: Generation | None = None,
        image_fps: float = 0.0,
        timeout: float | None = None,
        on_progress: AsyncProgressCallback | None = None,
        on_upload: UploadCallback | None = None,
    ) -> AsyncSession:
        """Uploads ``media`` and returns the new :class:`AsyncSession` once it exists.

        See :meth:`VideoQAClient.create_session`; ``on_progress`` may be a coroutine function.
        """
        stream = self.stream_create_session(
            media,
            images=images,
            model=model,
            sampling=sampling,
            pruning=pruning,
            question=question,
            generation=generation,
            image_fps=image_fps,
            timeout=timeout,
            on_upload=on_upload,
        )
        info, answer_events = await _session_events(stream, on_progress)
        if info is None:
            raise Unknown("the server ended CreateSession without creating a session")
        first_answer = Answer.from_events(answer_events) if question else None
        return AsyncSession(self, info, first_answer=first_answer)

    async def session(self, session_id: str) -> AsyncSession:
        """A handle on an existing session (fetches its info; :class:`NotFound` if unknown)."""
        return AsyncSession(self, await self.get_session(session_id))

    def stream_append_media(
        self,
        session_id: str,
        media: MediaSource,
        *,
        images: bool = False,
        sampling: FrameSampling | None = None,
        image_fps: float = 0.0,
        timeout: float | None = None,
        on_upload: UploadCallback | None = None,
    ) -> AsyncIterator[Event]:
        """Appends ``media`` to a session and yields the server's events (an async iterator).

        See :meth:`VideoQAClient.stream_append_media`. Files are checked here; the call starts
        on the first ``__anext__``. Closing the iterator early (``aclose``) cancels it.
        """
        loaded = Media.load(media, images=images)
        spec = build_append_spec(session_id, loaded, sampling=sampling, image_fps=image_fps)
        deadline_s = timeout if timeout is not None else self.timeouts.append_media

        def start(remaining: float) -> tuple[Any, UploadRequests]:
            requests = UploadRequests(loaded.requests(spec, self.chunk_size, on_upload))
            call = self._stub.AppendMedia(requests, timeout=remaining, metadata=self._metadata)
            return call, requests

        return self._stream(start, deadline_s)

    async def append_media(
        self,
        session_id: str,
        media: MediaSource,
        *,
        images: bool = False,
        sampling: FrameSampling | None = None,
        image_fps: float = 0.0,
        timeout: float | None = None,
        on_progress: AsyncProgressCallback | None = None,
        on_upload: UploadCallback | None = None,
    ) -> SessionInfo:
        """Appends ``media`` to a session and returns the session's updated :class:`SessionInfo`.

        See :meth:`VideoQAClient.append_media`; ``on_progress`` may be a coroutine function.
        """
        stream = self.stream_append_media(
            session_id,
            media,
            images=images,
            sampling=sampling,
            image_fps=image_fps,
            timeout=timeout,
            on_upload=on_upload,
        )
        info, _ = await _session_events(stream, on_progress)
        if info is None:
            raise Unknown("the server ended AppendMedia without describing the session")
        return info

    def ask(
        self,
        session_id: str,
        question: str,
        generation: Generation | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Event]:
        """Asks a question about a session; yields :class:`Token` events then :class:`TurnStats`."""
        request = build_ask(session_id, question, generation)
        deadline_s = timeout if timeout is not None else self.timeouts.ask

        def start(remaining: float) -> tuple[Any, None]:
            return self._stub.Ask(request, timeout=remaining, metadata=self._metadata), None

        return self._stream(start, deadline_s)

    async def ask_text(
        self,
        session_id: str,
        question: str,
        generation: Generation | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Like :meth:`ask`, collecting the answer."""
        stream = self.ask(session_id, question, generation, timeout)
        async with aclosing(stream):  # type: ignore[type-var]
            return Answer.from_events([event async for event in stream])

    async def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        """Describes a session."""
        request = pb.GetSessionRequest(session_id=session_id)
        reply = await self._unary(self._stub.GetSession, request, timeout)
        return convert.session_info_from_pb(reply)

    async def delete_session(self, session_id: str, *, timeout: float | None = None) -> None:
        """Deletes a session and everything stored for it (:class:`NotFound` if unknown)."""
        request = pb.DeleteSessionRequest(session_id=session_id)
        await self._unary(self._stub.DeleteSession, request, timeout)

    # ----------------------------------------------------------------------------------------
    # Deployment

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models this deployment serves."""
        reply = await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [convert.model_from_pb(m) for m in reply.models]

    async def list_methods(self, *, timeout: float | None = None) -> list[MethodInfo]:
        """The KV pruning methods with their parameters, defaults and bounds."""
        reply = await self._unary(self._stub.ListMethods, pb.ListMethodsRequest(), timeout)
        return [convert.method_from_pb(m) for m in reply.methods]

    async def list_reductions(self, *, timeout: float | None = None) -> list[MethodInfo]:
        """The reductions before the language model (``Pruning.reduction.method``), with their
        parameters, defaults and bounds."""
        reply = await self._unary(self._stub.ListMethods, pb.ListMethodsRequest(), timeout)
        return [convert.method_from_pb(m) for m in reply.reductions]

    async def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """Limits and versions of this deployment."""
        reply = await self._unary(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout)
        return convert.server_info_from_pb(reply)

    # ----------------------------------------------------------------------------------------
    # Calls with deadlines, retries and typed errors

    async def _unary(self, method: Callable[..., Awaitable[_R]], request: Any, timeout: float | None) -> _R:
        deadline = Deadline(timeout if timeout is not None else self.timeouts.unary)
        attempt = 0
        while True:
            try:
                return await method(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as e:
                delay = self.retry.delay(attempt, e, deadline)
                if delay is None:
                    raise from_rpc_error(e) from None
            await asyncio.sleep(delay)
            attempt += 1

    def _stream(
        self, start: Callable[[float], tuple[Any, UploadRequests | None]], timeout: float
    ) -> AsyncIterator[Event]:
        deadline = Deadline(timeout)

        async def events() -> AsyncIterator[Event]:
            attempt = 0
            while True:
                call, requests = start(deadline.remaining())
                received = False
                try:
                    async for message in call:
                        received = True
                        event = convert.event_from_pb(message)
                        if event is not None:
                            yield event
                    return
                except asyncio.CancelledError:
                    # grpc.aio cancels the call when reading the media raises: report that error.
                    if requests is not None and requests.error is not None:
                        raise requests.error from None
                    raise
                except grpc.RpcError as e:
                    if requests is not None and requests.error is not None:
                        raise requests.error from None  # reading the media failed, not the call
                    delay = None if received else self.retry.delay(attempt, e, deadline)
                    if delay is None:
                        raise from_rpc_error(e) from None
                finally:
                    call.cancel()  # a no-op once the call has ended; cancels it when abandoned
                await asyncio.sleep(delay)
                attempt += 1

        return events()


class AsyncSession:
    """A session on the server, for the asyncio client (see :class:`Session`).

    Used as an async context manager, the session is deleted on exit.
    """

    def __init__(self, client: AsyncVideoQAClient, info: SessionInfo, first_answer: Answer | None = None) -> None:
        self._client = client
        self.info = info
        self.first_answer = first_answer

    @property
    def id(self) -> str:
        return self.info.session_id

    def ask(
        self,
        question: str,
        generation: Generation | None = None,
        *,
        timeout: float | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[Event]:
        """Asks a follow-up question; yields :class:`Token` events then :class:`TurnStats`."""
        gen = merge_generation(
            generation, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        return self._client.ask(self.id, question, gen, timeout)

    async def ask_text(
        self,
        question: str,
        generation: Generation | None = None,
        *,
        timeout: float | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Answer:
        """Like :meth:`ask`, collecting the answer."""
        gen = merge_generation(
            generation, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        return await self._client.ask_text(self.id, question, gen, timeout)

    async def append(
        self,
        video_path_or_bytes: MediaSource | None = None,
        *,
        images: MediaSource | None = None,
        sampling: FrameSampling | None = None,
        image_fps: float = 0.0,
        timeout: float | None = None,
        on_progress: AsyncProgressCallback | None = None,
        on_upload: UploadCallback | None = None,
    ) -> SessionInfo:
        """Appends a video segment or an image sequence to this session; updates and returns
        :attr:`info` (see :meth:`Session.append`)."""
        media, as_images = append_source(video_path_or_bytes, images)
        self.info = await self._client.append_media(
            self.id,
            media,
            images=as_images,
            sampling=sampling,
            image_fps=image_fps,
            timeout=timeout,
            on_progress=on_progress,
            on_upload=on_upload,
        )
        return self.info

    async def refresh(self) -> SessionInfo:
        """Fetches the session's current info into :attr:`info`."""
        self.info = await self._client.get_session(self.id)
        return self.info

    async def delete(self) -> None:
        """Deletes the session on the server."""
        await self._client.delete_session(self.id)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with suppress(NotFound):
            await self.delete()

    def __repr__(self) -> str:
        return f"AsyncSession({self.id!r}, model={self.info.model!r}, turns={self.info.turns})"


async def _session_events(stream, on_progress: AsyncProgressCallback | None) -> tuple[SessionInfo | None, list[Event]]:
    """Drain an upload's event stream: progress to ``on_progress`` (awaited if it is a coroutine),
    the session event's info, and every other event (a first answer's) in order."""
    info: SessionInfo | None = None
    rest: list[Event] = []
    async with aclosing(stream):  # type: ignore[type-var]
        async for event in stream:
            if isinstance(event, Progress):
                if on_progress is not None:
                    result = on_progress(event)
                    if inspect.isawaitable(result):
                        await result
            elif isinstance(event, SessionCreated):
                info = event.session
            else:
                rest.append(event)
    return info, rest
