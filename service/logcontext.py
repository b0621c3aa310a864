"""The request id and session id of the call being served, on every log line of that call.

The frontend gives every public call a request id (the client's ``x-request-id`` when it sends a
usable one, else a random one), returns it in the trailing metadata ``x-request-id`` of every
outcome, errors included, and passes it to the worker in the ``CallContext``; the worker binds
the same id. Both halves keep it in context variables, so a :class:`CallFilter` on a log handler
can stamp it (and the session id) on every record emitted while the call runs, in its task or in a
thread it hands work to with ``asyncio.to_thread``.

- :func:`bind` sets the ids of the current call (each gRPC call runs in its own asyncio task, so
  they never leak into another call);
- :class:`RequestIds` is the frontend's server interceptor: it picks the id, binds it, puts it in
  the trailing metadata, and logs every call that ends in an error status with it;
- :func:`install` adds the filter to the root logger's handlers; :data:`FORMAT` shows the ids.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from contextlib import asynccontextmanager

import grpc

from videoqa.service.interceptors import guarded, own_rpc

log = logging.getLogger(__name__)

#: Metadata key of the request id, in (from the client, optional) and out (trailing, always).
HEADER = "x-request-id"
#: A client's request id is used when it is 1 to 128 visible ASCII characters, else replaced.
USABLE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
#: Log format of the server processes: the call's ids, when there is a call, after the logger name.
FORMAT = "%(asctime)s %(levelname)s %(name)s%(call)s: %(message)s"

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("videoqa_request_id", default="")
_session_id: contextvars.ContextVar[str] = contextvars.ContextVar("videoqa_session_id", default="")


def bind(request_id: str | None = None, session_id: str | None = None) -> None:
    """Set the current call's ids (``None`` leaves one as it is)."""
    if request_id is not None:
        _request_id.set(request_id)
    if session_id is not None:
        _session_id.set(session_id)


def request_id() -> str:
    """The current call's request id ("" outside a call)."""
    return _request_id.get()


def session_id() -> str:
    """The current call's session id ("" outside a call or before it is known)."""
    return _session_id.get()


class CallFilter(logging.Filter):
    """Adds ``request_id``, ``session_id`` and ``call`` (`` [request_id=… session_id=…]``, or ""
    outside a call) to every record; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid, sid = _request_id.get(), _session_id.get()
        record.request_id, record.session_id = rid, sid
        parts = [f"request_id={rid}"] if rid else []
        if sid:
            parts.append(f"session_id={sid}")
        record.call = f" [{' '.join(parts)}]" if parts else ""
        return True


def install(handlers: list[logging.Handler] | None = None) -> None:
    """Add a :class:`CallFilter` to ``handlers`` (default: the root logger's), once each."""
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, CallFilter) for f in handler.filters):
            handler.addFilter(CallFilter())


def new_request_id(metadata) -> str:
    """The client's ``x-request-id`` if usable, else a fresh random one."""
    offered = dict(metadata or ()).get(HEADER, "")
    return offered if isinstance(offered, str) and USABLE_ID.match(offered) else uuid.uuid4().hex


def _status_name(code) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((s.name for s in grpc.StatusCode if s.value[0] == code), str(code))


class _Tagged:
    """A servicer context whose trailing metadata always carries the request id, whatever the
    handler aborts with (``abort`` and ``abort_with_status`` replace trailing metadata), and which
    logs the error it ends the call with."""

    def __init__(self, context: grpc.aio.ServicerContext, rpc: str, request_id: str):
        self._context, self._rpc = context, rpc
        self._tag = ((HEADER, request_id),)
        context.set_trailing_metadata(self._tag)

    def __getattr__(self, name: str):
        return getattr(self._context, name)

    def _tagged(self, metadata) -> tuple:
        return (*((k, v) for k, v in metadata or () if k != HEADER), *self._tag)

    def set_trailing_metadata(self, trailing_metadata) -> None:
        self._context.set_trailing_metadata(self._tagged(trailing_metadata))

    async def abort(self, code, details: str = "", trailing_metadata=()):
        log.info("%s failed: %s: %s", self._rpc, _status_name(code), details)
        await self._context.abort(code, details, self._tagged(trailing_metadata))

    async def abort_with_status(self, status):
        await self.abort(status.code, status.details, status.trailing_metadata)


class RequestIds(grpc.aio.ServerInterceptor):
    """Frontend interceptor: every call to our own services gets a request id, bound for logging
    and returned in the trailing metadata of every outcome (set before the handler runs, so no
    abort can go out without it)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        rpc = own_rpc(handler_call_details)
        if handler is None or rpc is None:
            return handler

        @asynccontextmanager
        async def tag(context: grpc.aio.ServicerContext):
            rid = new_request_id(context.invocation_metadata())
            bind(rid, "")
            yield _Tagged(context, rpc, rid)

        return guarded(handler, tag)


__all__ = [
    "FORMAT",
    "HEADER",
    "CallFilter",
    "RequestIds",
    "bind",
    "install",
    "new_request_id",
    "request_id",
    "session_id",
]
