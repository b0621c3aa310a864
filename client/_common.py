"""Pieces shared by the sync and the asyncio clients: options, deadlines, retries, requests."""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc

from videoqa.v1 import videoqa_pb2 as pb

from . import convert
from ._media import Media, MediaSource
from .types import FrameSampling, Generation, Pruning, Timeouts

#: Largest message either side may send; an upload is streamed in much smaller pieces.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_TARGET = "localhost:50051"
_PUSHBACK_KEY = "grpc-retry-pushback-ms"

Metadata = Mapping[str, str] | Sequence[tuple[str, str]]


def resolve_timeouts(timeout: float | Timeouts | None) -> Timeouts:
    """A client's default deadlines: a number applies to every call, ``None`` means the defaults."""
    if timeout is None:
        return Timeouts()
    if isinstance(timeout, Timeouts):
        return timeout
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    return Timeouts(unary=timeout, create_session=timeout, ask=timeout, append_media=timeout)


def channel_options(extra: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """Channel options with message size limits set; ``extra`` entries override them."""
    options: dict[str, Any] = {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    }
    options.update(dict(extra or ()))
    return list(options.items())


def normalize_metadata(metadata: Metadata | None, api_key: str | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata as the tuple of pairs gRPC expects, keys lower-cased; ``api_key`` adds (or
    replaces) ``authorization: Bearer <api_key>``."""
    pairs = () if metadata is None else metadata.items() if isinstance(metadata, Mapping) else metadata
    normalized = tuple((str(k).lower(), v) for k, v in pairs)
    if api_key:
        normalized = (*(p for p in normalized if p[0] != "authorization"), ("authorization", f"Bearer {api_key}"))
    return normalized


def tls_credentials(
    ca_cert: str | bytes | None = None, client_cert: str | bytes | None = None, client_key: str | bytes | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files (paths) or PEM bytes: ``ca_cert`` verifies the server
    (the system's roots when ``None``); ``client_cert`` and ``client_key`` are for mutual TLS."""

    def pem(value: str | bytes | None) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        with open(value, "rb") as f:
            return f.read()

    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together (mutual TLS)")
    return grpc.ssl_channel_credentials(
        root_certificates=pem(ca_cert), private_key=pem(client_key), certificate_chain=pem(client_cert)
    )


def check_chunk_size(chunk_size: int) -> int:
    if not 0 < chunk_size <= MAX_MESSAGE_BYTES - 1024:
        raise ValueError(f"chunk_size must be in (0, {MAX_MESSAGE_BYTES - 1024}]")
    return chunk_size


class Deadline:
    """An absolute deadline over all the attempts of one call."""

    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._at = time.monotonic() + timeout

    def remaining(self) -> float:
        """Seconds left, at least a millisecond so that gRPC reports DEADLINE_EXCEEDED itself."""
        return max(self._at - time.monotonic(), 0.001)

    def left(self) -> float:
        return self._at - time.monotonic()


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, for ``UNAVAILABLE`` only.

    A call is tried at most ``retries + 1`` times; the wait before retry ``n`` (from 0) is drawn
    uniformly from [d/2, d] with ``d = min(max_backoff, backoff * 2**n)``, unless the server
    asked for a delay with ``grpc-retry-pushback-ms``.
    """

    retries: int = 3
    backoff: float = 0.2
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must not be negative")

    def delay(self, attempt: int, error: grpc.RpcError, deadline: Deadline) -> float | None:
        """Seconds to wait before retrying after failed attempt ``attempt`` (from 0), or None."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code is not grpc.StatusCode.UNAVAILABLE or attempt >= self.retries:
            return None
        pushback = _pushback_seconds(error)
        if pushback is not None and pushback < 0:
            return None  # the server asked not to retry
        if pushback is None:
            ceiling = min(self.max_backoff, self.backoff * 2**attempt)
            pushback = random.uniform(ceiling / 2, ceiling)
        # Waiting past the deadline is pointless: give up with the UNAVAILABLE at hand.
        return pushback if pushback < deadline.left() else None


def _pushback_seconds(error: grpc.RpcError) -> float | None:
    trailing = getattr(error, "trailing_metadata", None)
    try:
        pairs = trailing() if callable(trailing) else None
    except Exception:  # pragma: no cover - defensive: metadata of a broken call
        return None
    for key, value in pairs or ():
        if key == _PUSHBACK_KEY:
            try:
                return int(value) / 1000.0
            except (TypeError, ValueError):
                return -1.0
    return None


def merge_generation(generation: Generation | None, **overrides: Any) -> Generation | None:
    """``generation`` with the non-None ``overrides`` applied (None if nothing was given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return generation
    return dataclasses.replace(generation or Generation(), **given)


def build_spec(
    media: Media,
    *,
    model: str,
    sampling: FrameSampling | None,
    pruning: Pruning | None,
    question: str,
    generation: Generation | None,
    image_fps: float,
) -> pb.SessionSpec:
    """The first message of an upload."""
    spec = pb.SessionSpec(
        model=model,
        media_kind=media.media_kind,  # type: ignore[arg-type]
        total_bytes=media.total_bytes,
        question=question,
        image_fps=image_fps,
    )
    if sampling is not None:
        spec.sampling.CopyFrom(convert.sampling_to_pb(sampling))
    if pruning is not None:
        spec.pruning.CopyFrom(convert.pruning_to_pb(pruning))
    if generation is not None:
        spec.generation.CopyFrom(convert.generation_to_pb(generation))
    return spec


def new_idempotency_key() -> str:
    """A key for one logical call, sent again on each of its retries (see AskRequest)."""
    return uuid.uuid4().hex


def build_append_spec(
    session_id: str, media: Media, *, sampling: FrameSampling | None, image_fps: float, idempotency_key: str = ""
) -> pb.AppendSpec:
    """The first message of an append (with a new idempotency key unless one is given)."""
    spec = pb.AppendSpec(
        session_id=session_id,
        media_kind=media.media_kind,  # type: ignore[arg-type]
        total_bytes=media.total_bytes,
        image_fps=image_fps,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )
    if sampling is not None:
        spec.sampling.CopyFrom(convert.sampling_to_pb(sampling))
    return spec


def append_source(video: MediaSource | None, images: MediaSource | None) -> tuple[MediaSource, bool]:
    """What :meth:`Session.append` sends: ``(media, images?)`` from its two exclusive arguments."""
    if (video is None) == (images is None):
        raise ValueError("give one of a video (path or bytes) and images")
    return (images, True) if images is not None else (video, False)  # type: ignore[return-value]


def build_ask(
    session_id: str, question: str, generation: Generation | None, idempotency_key: str = ""
) -> pb.AskRequest:
    """An Ask (with a new idempotency key unless one is given: retries of this call reuse it)."""
    request = pb.AskRequest(
        session_id=session_id, question=question, idempotency_key=idempotency_key or new_idempotency_key()
    )
    if generation is not None:
        request.generation.CopyFrom(convert.generation_to_pb(generation))
    return request


class UploadRequests:
    """Iterator over an upload's messages that remembers an exception raised while reading media."""

    def __init__(self, requests: Iterator[pb.CreateSessionRequest | pb.AppendMediaRequest]) -> None:
        self._requests = requests
        self.error: BaseException | None = None

    def __iter__(self) -> UploadRequests:
        return self

    def __next__(self) -> pb.CreateSessionRequest | pb.AppendMediaRequest:
        try:
            return next(self._requests)
        except StopIteration:
            raise
        except BaseException as e:
            self.error = e
            raise
