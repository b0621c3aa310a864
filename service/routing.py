"""Session affinity across workers: rendezvous (highest-random-weight) hashing plus health.

Every frontend orders the workers the same way for a given session id, so a session's turns go
to the worker that already holds it (hot), and when that worker is down the next one in the
order takes over. Adding or removing a worker only moves the sessions that ranked it first.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from videoqa.internal.v1 import worker_pb2_grpc

log = logging.getLogger(__name__)

WORKER_SERVICE = "videoqa.internal.v1.Worker"
#: How long the channel of a worker gone from DNS stays open for the calls it still carries.
RETIRED_CHANNEL_S = 3600.0
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]


def rendezvous_order(key: str, workers: list[str]) -> list[str]:
    """Workers sorted by the weight hash(key, worker), highest first."""

    def weight(worker: str) -> bytes:
        return hashlib.sha256(f"{worker}\x00{key}".encode()).digest()

    return sorted(workers, key=weight, reverse=True)


@dataclass
class WorkerHandle:
    address: str
    channel: grpc.aio.Channel
    stub: worker_pb2_grpc.WorkerStub
    health: health_pb2_grpc.HealthStub
    healthy: bool = False
    last_change: float = field(default_factory=time.monotonic)

    def mark(self, healthy: bool) -> None:
        if healthy != self.healthy:
            log.info("worker %s is %s", self.address, "up" if healthy else "down")
            self.healthy, self.last_change = healthy, time.monotonic()


class WorkerPool:
    """The workers a frontend routes to, with a background health probe.

    An address is ``host:port``, or ``dns:NAME:PORT``: every address ``NAME`` resolves to (a
    Kubernetes headless Service), re-resolved at each probe so that workers can come and go."""

    def __init__(self, addresses: list[str], probe_interval_s: float = 1.0):
        if not addresses:
            raise ValueError("a frontend needs at least one worker address")
        self._static = {a for a in addresses if not a.startswith("dns:")}
        self.names = [a.removeprefix("dns:") for a in dict.fromkeys(addresses) if a.startswith("dns:")]
        for name in self.names:
            host, _, port = name.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"worker address dns:{name}: expected dns:NAME:PORT")
        self.workers: dict[str, WorkerHandle] = {}
        self._retired: list[tuple[float, WorkerHandle]] = []
        for address in dict.fromkeys(addresses):
            if not address.startswith("dns:"):
                self._add(address)
        self.probe_interval_s = probe_interval_s
        self._probe_task: asyncio.Task | None = None
        self.changed = asyncio.Event()

    def _add(self, address: str) -> None:
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.workers[address] = WorkerHandle(
            address, channel, worker_pb2_grpc.WorkerStub(channel), health_pb2_grpc.HealthStub(channel)
        )

    async def resolve(self) -> None:
        """Bring the workers found through ``dns:`` names up to date (a failed lookup keeps the
        last known set: a DNS hiccup must not drop every worker)."""
        if not self.names:
            return
        loop = asyncio.get_running_loop()
        found: set[str] = set()
        for name in self.names:
            host, _, port = name.rpartition(":")
            try:
                infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as error:
                log.warning("cannot resolve workers at %s (%s); keeping the last known set", name, error)
                return
            for family, *_, sockaddr in infos:
                ip = sockaddr[0]
                found.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
        now = time.monotonic()
        for address in list(self.workers):
            if address not in found and address not in self._static:  # host:port addresses stay
                log.info("worker %s is gone from DNS", address)
                # Not closed yet: a draining worker leaves DNS first, and its calls in flight go on.
                self._retired.append((now, self.workers.pop(address)))
        while self._retired and now - self._retired[0][0] > RETIRED_CHANNEL_S:
            await self._retired.pop(0)[1].channel.close()
        for address in sorted(found - set(self.workers)):
            log.info("worker %s found through DNS", address)
            self._add(address)

    def order(self, key: str) -> list[WorkerHandle]:
        """Healthy workers in rendezvous order, then the others (a probe may be stale)."""
        ranked = [self.workers[a] for a in rendezvous_order(key, list(self.workers))]
        return [w for w in ranked if w.healthy] + [w for w in ranked if not w.healthy]

    @property
    def any_healthy(self) -> bool:
        return any(w.healthy for w in self.workers.values())

    async def probe_once(self) -> None:
        async def check(worker: WorkerHandle) -> None:
            try:
                reply = await worker.health.Check(health_pb2.HealthCheckRequest(service=WORKER_SERVICE), timeout=2.0)
                worker.mark(reply.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError:
                worker.mark(False)

        await self.resolve()
        await asyncio.gather(*(check(w) for w in list(self.workers.values())))
        self.changed.set()

    def start(self) -> None:
        async def loop() -> None:
            while True:
                await self.probe_once()
                await asyncio.sleep(self.probe_interval_s)

        self._probe_task = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        handles = [*self.workers.values(), *(handle for _, handle in self._retired)]
        await asyncio.gather(*(w.channel.close() for w in handles), return_exceptions=True)
