"""Typed exceptions for the gRPC status codes of the videoqa API.

Every failed call raises a subclass of :class:`VideoQAError` named after its status code, also
when the failure happens in the middle of a stream. What the codes mean for this API:

- :class:`InvalidArgument`: bad input (sampling spec, unsupported codec, unknown method or
  parameter, question too long).
- :class:`NotFound`: unknown, expired or deleted session.
- :class:`FailedPrecondition`: the session was built by another model revision or method.
- :class:`ResourceExhausted`: over a configured cap (upload size, frames, tokens) or queue full.
- :class:`Unavailable`: transient (store down, server draining); the only code the client
  retries, with exponential backoff.
- :class:`DeadlineExceeded` / :class:`Cancelled`: the deadline passed or the call was cancelled.
- :class:`DataLoss`: a stored cache failed its integrity check.
- :class:`Unauthenticated` / :class:`PermissionDenied`: authentication and authorisation.
- :class:`Internal`: a server bug; :class:`Unimplemented`: an optional RPC this server lacks.
"""

from __future__ import annotations

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "VideoQAError",
    "error_for_code",
    "from_rpc_error",
]


class VideoQAError(Exception):
    """A failed videoqa call: ``code`` is the gRPC status code, ``details`` the server's message."""

    #: The status code of this class (the instance's ``code`` may differ for the base class).
    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str = "", code: grpc.StatusCode | None = None) -> None:
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.details: str = details
        super().__init__(f"{self.code.name}: {details}" if details else self.code.name)

    @property
    def retryable(self) -> bool:
        """Whether retrying the same call later may succeed (only for ``UNAVAILABLE``)."""
        return self.code is grpc.StatusCode.UNAVAILABLE


class InvalidArgument(VideoQAError):
    """``INVALID_ARGUMENT``: the request is malformed (sampling, codec, method, parameter)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(VideoQAError):
    """``NOT_FOUND``: unknown, expired or deleted session."""

    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(VideoQAError):
    """``ALREADY_EXISTS``."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(VideoQAError):
    """``PERMISSION_DENIED``: the caller may not do this."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(VideoQAError):
    """``UNAUTHENTICATED``: missing or invalid credentials."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(VideoQAError):
    """``RESOURCE_EXHAUSTED``: over a configured cap (upload, frames, tokens) or queue full."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(VideoQAError):
    """``FAILED_PRECONDITION``: the session was built by another model revision or method."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(VideoQAError):
    """``ABORTED``: the operation was aborted (e.g. a concurrency conflict)."""

    default_code = grpc.StatusCode.ABORTED


class OutOfRange(VideoQAError):
    """``OUT_OF_RANGE``."""

    default_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(VideoQAError):
    """``UNIMPLEMENTED``: this server does not implement the RPC."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(VideoQAError):
    """``INTERNAL``: a server bug."""

    default_code = grpc.StatusCode.INTERNAL


class Unavailable(VideoQAError):
    """``UNAVAILABLE``: transient; the client retries these with backoff before raising."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(VideoQAError):
    """``DATA_LOSS``: a stored cache failed its integrity check."""

    default_code = grpc.StatusCode.DATA_LOSS


class DeadlineExceeded(VideoQAError):
    """``DEADLINE_EXCEEDED``: the call's deadline passed."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(VideoQAError):
    """``CANCELLED``: the call was cancelled."""

    default_code = grpc.StatusCode.CANCELLED


class Unknown(VideoQAError):
    """``UNKNOWN``: an error without a more specific status (also a malformed reply)."""

    default_code = grpc.StatusCode.UNKNOWN


_BY_CODE: dict[grpc.StatusCode, type[VideoQAError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        DeadlineExceeded,
        Cancelled,
        Unknown,
    )
}


def error_for_code(code: grpc.StatusCode | None, details: str = "") -> VideoQAError:
    """The typed exception for ``code`` (:class:`Unknown` for ``None`` or an unmapped code)."""
    cls = _BY_CODE.get(code, Unknown) if code is not None else Unknown
    return cls(details)


def from_rpc_error(e: grpc.RpcError) -> VideoQAError:
    """Converts a ``grpc.RpcError`` (sync or ``grpc.aio``) to its typed :class:`VideoQAError`."""
    code_fn = getattr(e, "code", None)
    details_fn = getattr(e, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else str(e)
    return error_for_code(code, details or "")
