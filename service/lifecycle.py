"""Draining: after SIGTERM a server refuses new calls with UNAVAILABLE and lets the calls in flight
finish, while its health answers NOT_SERVING.

:class:`Drain` is a server interceptor: it counts the calls in flight on our own services and, once
:meth:`Drain.start` is called, turns every new one away (health and reflection still answer, so
probes and load balancers see NOT_SERVING rather than a closed port). :meth:`Drain.wait` returns
when the calls in flight are done or the grace period is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from videoqa.service.metrics import INSTRUMENTED_SERVICES

REFUSAL = "the server is shutting down; retry on another instance"


class Drain(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self.draining = True

    async def wait(self, grace: float) -> bool:
        """Wait until no call is in flight, at most ``grace`` seconds; whether they all finished."""
        deadline = time.monotonic() + grace
        while self.in_flight:
            self._idle.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=min(remaining, 0.5))
        return True

    def _enter(self) -> None:
        self.in_flight += 1

    def _leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.split("/")[1] if handler_call_details.method.count("/") >= 2 else ""
        if handler is None or service not in INSTRUMENTED_SERVICES:
            return handler
        drain = self

        if handler.response_streaming:
            behavior = handler.unary_stream or handler.stream_stream

            async def streaming(request, context) -> AsyncIterator:
                if drain.draining:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, REFUSAL)
                drain._enter()
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    drain._leave()

            make = (
                grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
            )
            return make(streaming, handler.request_deserializer, handler.response_serializer)
        behavior = handler.unary_unary or handler.stream_unary

        async def unary(request, context):
            if drain.draining:
                await context.abort(grpc.StatusCode.UNAVAILABLE, REFUSAL)
            drain._enter()
            try:
                return await behavior(request, context)
            finally:
                drain._leave()

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(unary, handler.request_deserializer, handler.response_serializer)
