"""What the server interceptors share: finding our own RPCs, and running their calls inside a guard.

A *guard* is ``guard(context) -> async context manager``; :func:`guarded` returns the handler with
every call (unary or streaming, either direction) run inside it, so an interceptor only says what
happens around a call (count it, time it, refuse it), not how each handler kind is rebuilt. A guard
that enters as a context object (``async with guard(context) as replacement``) hands the handler
that object instead of the call's own context (a wrapper around it); ``None`` keeps the context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import grpc

#: Our own services; health and reflection calls pass through untouched.
OWN_SERVICES = ("videoqa.v1.VideoQA", "videoqa.internal.v1.Worker")

Guard = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager]


def own_rpc(handler_call_details) -> str | None:
    """The method name of a call to one of :data:`OWN_SERVICES`, else ``None``."""
    parts = handler_call_details.method.split("/")
    return parts[2] if len(parts) == 3 and parts[1] in OWN_SERVICES else None


def guarded(handler: grpc.RpcMethodHandler, guard: Guard) -> grpc.RpcMethodHandler:
    """``handler`` with each call run inside ``async with guard(context)`` (with the context the
    guard enters as, if any)."""
    if handler.response_streaming:
        behavior = handler.unary_stream or handler.stream_stream

        async def streaming(request, context) -> AsyncIterator:
            async with guard(context) as replacement:
                async for response in behavior(request, context if replacement is None else replacement):
                    yield response

        make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return make(streaming, handler.request_deserializer, handler.response_serializer)
    behavior = handler.unary_unary or handler.stream_unary

    async def unary(request, context):
        async with guard(context) as replacement:
            return await behavior(request, context if replacement is None else replacement)

    make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
    return make(unary, handler.request_deserializer, handler.response_serializer)
