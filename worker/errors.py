"""Domain errors raised by the worker runtime.

The worker never imports grpc: each error names its status as a plain string, and
``videoqa.service.errors`` turns it into a gRPC status. Messages are written for the API caller.
"""

from __future__ import annotations


class VideoQAError(Exception):
    """Base class; ``status`` is the gRPC status code name this error maps to."""

    status: str = "INTERNAL"
    #: ``ErrorInfo.reason`` of the status (the class name when empty).
    reason: str = ""

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        #: The request field at fault, for a ``BadRequest`` field violation.
        self.field = field
        #: A hint for retryable errors.
        self.retry_after_s = retry_after_s


class InvalidInput(VideoQAError):
    """The request is malformed or names something that does not exist (method, parameter)."""

    status = "INVALID_ARGUMENT"


class MediaDecodeError(InvalidInput):
    """The uploaded media could not be decoded (empty, truncated, not a video, decoder crash)."""


class LimitExceeded(VideoQAError):
    """The request exceeds a configured cap (upload size, frames, tokens)."""

    status = "RESOURCE_EXHAUSTED"


class StoreFull(LimitExceeded):
    """The session store refused a write because it is full (Redis ``maxmemory`` with a policy
    that does not evict); the turn was rolled back."""

    reason = "STORE_FULL"


class Overloaded(VideoQAError):
    """The worker's queue is full; retry later."""

    status = "RESOURCE_EXHAUSTED"


class SessionNotFound(VideoQAError):
    """No such session: unknown, expired or deleted (another tenant's session is :class:`SessionForbidden`)."""

    status = "NOT_FOUND"


class SessionForbidden(VideoQAError):
    """The session exists but belongs to another tenant."""

    status = "PERMISSION_DENIED"


class IncompatibleSession(VideoQAError):
    """The session was built by another model, revision or format version."""

    status = "FAILED_PRECONDITION"


class CorruptSession(VideoQAError):
    """A stored session failed its integrity check; it has been discarded."""

    status = "DATA_LOSS"


class NotReady(VideoQAError):
    """The worker is starting, draining, or a dependency is down; retry later."""

    status = "UNAVAILABLE"


class StoreUnavailable(NotReady):
    """The session store did not answer (down, unreachable, timed out, failing over)."""

    reason = "STORE_UNAVAILABLE"


class TurnCancelled(VideoQAError):
    """The caller went away; the turn was stopped and the session left as it was."""

    status = "CANCELLED"


class TurnDeadlineExceeded(VideoQAError):
    """The caller's deadline passed; the turn was stopped and the session left as it was."""

    status = "DEADLINE_EXCEEDED"
