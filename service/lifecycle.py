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
from contextlib import asynccontextmanager

import grpc

from videoqa.service.interceptors import guarded, own_rpc

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

    @asynccontextmanager
    async def _admit(self, context: grpc.aio.ServicerContext):
        """Refuse the call while draining, else count it in flight until it ends."""
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, REFUSAL)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or own_rpc(handler_call_details) is None:
            return handler
        return guarded(handler, self._admit)
