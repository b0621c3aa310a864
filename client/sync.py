"""Blocking client of the ``videoqa.v1.VideoQA`` service.

Example::

    from videoqa.client import FrameSampling, Pruning, Token, VideoQAClient

    with VideoQAClient("localhost:50051") as client:
        session = client.create_session("clip.mp4", sampling=FrameSampling(num_frames=16),
                                        pruning=Pruning(budget=0.25))
        for event in session.ask("What happens first?"):
            if isinstance(event, Token):
                print(event.text, end="", flush=True)
        session.delete()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, suppress
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

__all__ = ["Session", "VideoQAClient"]

_R = TypeVar("_R")
ProgressCallback = Callable[[Progress], Any]


class VideoQAClient:
    """Blocking client of a videoqa server.

    Args:
        target: ``host:port`` of the server (or any gRPC target string).
        timeout: default deadlines; a number applies to every call, a :class:`Timeouts` sets
            each kind of call, ``None`` means 30 s for unary calls, 600 s for
            :meth:`create_session` and :meth:`append_media`, and 300 s for :meth:`ask`.
        retries: how many times a call failing with ``UNAVAILABLE`` is retried (streams only
            while no event has been received).
        backoff: first retry delay in seconds, doubled on each retry, with jitter.
        max_backoff: upper bound of the retry delay.
        chunk_size: size of the upload's pieces in bytes.
        credentials: channel credentials for TLS (:func:`tls_credentials`, or
            ``grpc.ssl_channel_credentials()``); plaintext when ``None``.
        metadata: metadata sent with every call.
        api_key: the server's API key, sent as ``authorization: Bearer <api_key>``.
        channel_options: extra gRPC channel options; they override the defaults, which raise
            the message size limits to 64 MiB.
    """

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
        options = _channel_options(channel_options)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.VideoQAStub(self._channel)

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> VideoQAClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoQAClient({self.target!r})"

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
    ) -> Iterator[Event]:
        """Uploads ``media`` and yields the server's events as they come.

        ``media`` is a video path or its bytes, or an image sequence: a list of image paths or
        bytes, a directory of images, or a single image with ``images=True``. Events are
        :class:`Progress`, then :class:`SessionCreated`, then, when ``question`` is given, the
        answer's :class:`Token` events and its :class:`TurnStats`. ``on_upload(sent, total)`` is
        called as the upload's bytes are handed to gRPC (from gRPC's sending thread).

        Files are checked here, before the call starts; the call itself starts on the first
        ``next()``. Closing the iterator early cancels the call.
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

    def create_session(
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
        on_progress: ProgressCallback | None = None,
        on_upload: UploadCallback | None = None,
    ) -> Session:
        """Uploads ``media`` and returns the new :class:`Session` once it exists.

        Arguments are those of :meth:`stream_create_session`; ``on_progress`` receives each
        :class:`Progress` event. When ``question`` is given, the first answer is collected into
        ``session.first_answer``.
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
        info, answer_events = _session_events(stream, on_progress)
        if info is None:
            raise Unknown("the server ended CreateSession without creating a session")
        first_answer = Answer.from_events(answer_events) if question else None
        return Session(self, info, first_answer=first_answer)

    def session(self, session_id: str) -> Session:
        """A handle on an existing session (fetches its info; :class:`NotFound` if unknown)."""
        return Session(self, self.get_session(session_id))

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
    ) -> Iterator[Event]:
        """Appends ``media`` to a session (e.g. the next part of a live stream) and yields the
        server's events as they come: :class:`Progress`, then one :class:`SessionCreated` holding
        the session as it now is.

        ``media`` is given as for :meth:`stream_create_session`; ``sampling`` applies to this
        segment alone. The segment's frames continue the session's clock. Errors:
        :class:`InvalidArgument` when the session's pruning method cannot compress
        progressively, :class:`ResourceExhausted` when the session would exceed its frame
        limit, :class:`NotFound` / :class:`PermissionDenied` for a session that is not there or
        not the caller's. Retries as for :meth:`stream_create_session`: only ``UNAVAILABLE``
        before any event, re-sending the whole media.

        Files are checked here, before the call starts; the call itself starts on the first
        ``next()``. Closing the iterator early cancels the call.
        """
        loaded = Media.load(media, images=images)
        spec = build_append_spec(session_id, loaded, sampling=sampling, image_fps=image_fps)
        deadline_s = timeout if timeout is not None else self.timeouts.append_media

        def start(remaining: float) -> tuple[Any, UploadRequests]:
            requests = UploadRequests(loaded.requests(spec, self.chunk_size, on_upload))
            call = self._stub.AppendMedia(requests, timeout=remaining, metadata=self._metadata)
            return call, requests

        return self._stream(start, deadline_s)

    def append_media(
        self,
        session_id: str,
        media: MediaSource,
        *,
        images: bool = False,
        sampling: FrameSampling | None = None,
        image_fps: float = 0.0,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_upload: UploadCallback | None = None,
    ) -> SessionInfo:
        """Appends ``media`` to a session and returns the session's updated :class:`SessionInfo`.

        Arguments are those of :meth:`stream_append_media`; ``on_progress`` receives each
        :class:`Progress` event.
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
        info, _ = _session_events(stream, on_progress)
        if info is None:
            raise Unknown("the server ended AppendMedia without describing the session")
        return info

    def ask(
        self,
        session_id: str,
        question: str,
        generation: Generation | None = None,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """Asks a question about a session; yields :class:`Token` events then :class:`TurnStats`.

        The call starts on the first ``next()``; closing the iterator early cancels it.
        """
        request = build_ask(session_id, question, generation)
        deadline_s = timeout if timeout is not None else self.timeouts.ask

        def start(remaining: float) -> tuple[Any, None]:
            return self._stub.Ask(request, timeout=remaining, metadata=self._metadata), None

        return self._stream(start, deadline_s)

    def ask_text(
        self,
        session_id: str,
        question: str,
        generation: Generation | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Like :meth:`ask`, collecting the answer."""
        with closing(self.ask(session_id, question, generation, timeout)) as events:
            return Answer.from_events(events)

    def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        """Describes a session."""
        request = pb.GetSessionRequest(session_id=session_id)
        return convert.session_info_from_pb(self._unary(self._stub.GetSession, request, timeout))

    def delete_session(self, session_id: str, *, timeout: float | None = None) -> None:
        """Deletes a session and everything stored for it (:class:`NotFound` if unknown)."""
        self._unary(self._stub.DeleteSession, pb.DeleteSessionRequest(session_id=session_id), timeout)

    # ----------------------------------------------------------------------------------------
    # Deployment

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models this deployment serves."""
        reply = self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [convert.model_from_pb(m) for m in reply.models]

    def list_methods(self, *, timeout: float | None = None) -> list[MethodInfo]:
        """The KV pruning methods with their parameters, defaults and bounds."""
        reply = self._unary(self._stub.ListMethods, pb.ListMethodsRequest(), timeout)
        return [convert.method_from_pb(m) for m in reply.methods]

    def list_reductions(self, *, timeout: float | None = None) -> list[MethodInfo]:
        """The reductions before the language model (``Pruning.reduction.method``), with their
        parameters, defaults and bounds."""
        reply = self._unary(self._stub.ListMethods, pb.ListMethodsRequest(), timeout)
        return [convert.method_from_pb(m) for m in reply.reductions]

    def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """Limits and versions of this deployment."""
        reply = self._unary(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout)
        return convert.server_info_from_pb(reply)

    # ----------------------------------------------------------------------------------------
    # Calls with deadlines, retries and typed errors

    def _unary(self, method: Callable[..., _R], request: Any, timeout: float | None) -> _R:
        deadline = Deadline(timeout if timeout is not None else self.timeouts.unary)
        attempt = 0
        while True:
            try:
                return method(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as e:
                delay = self.retry.delay(attempt, e, deadline)
                if delay is None:
                    raise from_rpc_error(e) from None
            time.sleep(delay)
            attempt += 1

    def _stream(self, start: Callable[[float], tuple[Any, UploadRequests | None]], timeout: float) -> Iterator[Event]:
        deadline = Deadline(timeout)

        def events() -> Iterator[Event]:
            attempt = 0
            while True:
                call, requests = start(deadline.remaining())
                received = False
                try:
                    for message in call:
                        received = True
                        event = convert.event_from_pb(message)
                        if event is not None:
                            yield event
                    return
                except grpc.RpcError as e:
                    if requests is not None and requests.error is not None:
                        raise requests.error from None  # reading the media failed, not the call
                    delay = None if received else self.retry.delay(attempt, e, deadline)
                    if delay is None:
                        raise from_rpc_error(e) from None
                finally:
                    call.cancel()  # a no-op once the call has ended; cancels it when abandoned
                time.sleep(delay)
                attempt += 1

        return events()


class Session:
    """A session on the server: the encoded media and its pruned KV cache.

    ``first_answer`` holds the answer to the question given to :meth:`VideoQAClient.create_session`,
    if any. Used as a context manager, the session is deleted on exit.
    """

    def __init__(self, client: VideoQAClient, info: SessionInfo, first_answer: Answer | None = None) -> None:
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
    ) -> Iterator[Event]:
        """Asks a follow-up question; yields :class:`Token` events then :class:`TurnStats`.

        Keyword generation parameters override those of ``generation``.
        """
        gen = merge_generation(
            generation, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        return self._client.ask(self.id, question, gen, timeout)

    def ask_text(
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
        return self._client.ask_text(self.id, question, gen, timeout)

    def append(
        self,
        video_path_or_bytes: MediaSource | None = None,
        *,
        images: MediaSource | None = None,
        sampling: FrameSampling | None = None,
        image_fps: float = 0.0,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_upload: UploadCallback | None = None,
    ) -> SessionInfo:
        """Appends a video segment, or an image sequence (``images``: a list of image paths or
        bytes, a directory, or one image), to this session; updates and returns :attr:`info`.

        See :meth:`VideoQAClient.append_media`. A question asked next sees all the media so far.
        """
        media, as_images = append_source(video_path_or_bytes, images)
        self.info = self._client.append_media(
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

    def refresh(self) -> SessionInfo:
        """Fetches the session's current info (turns, cache sizes) into :attr:`info`."""
        self.info = self._client.get_session(self.id)
        return self.info

    def delete(self) -> None:
        """Deletes the session on the server."""
        self._client.delete_session(self.id)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with suppress(NotFound):
            self.delete()

    def __repr__(self) -> str:
        return f"Session({self.id!r}, model={self.info.model!r}, turns={self.info.turns})"


def _session_events(stream, on_progress: ProgressCallback | None) -> tuple[SessionInfo | None, list[Event]]:
    """Drain an upload's event stream: progress to ``on_progress``, the session event's info, and
    every other event (a first answer's) in order."""
    info: SessionInfo | None = None
    rest: list[Event] = []
    with closing(stream):
        for event in stream:
            if isinstance(event, Progress):
                if on_progress is not None:
                    on_progress(event)
            elif isinstance(event, SessionCreated):
                info = event.session
            else:
                rest.append(event)
    return info, rest
