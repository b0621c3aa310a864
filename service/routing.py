"""Session affinity across workers: rendezvous (highest-random-weight) hashing plus health.

Every frontend orders the workers the same way for a given session id, so a session's turns go
to the worker that already holds it (hot), and when that worker is down the next one in the
order takes over. Adding or removing a worker only moves the sessions that ranked it first.

Health has hysteresis: a worker counts as down after ``failures_to_down`` consecutive failed
probes (an answer other than SERVING, an error, or no answer within ``probe_timeout_s``) and as
up again after one successful probe, so one probe lost under load does not take it out of
service. A call that finds the worker UNAVAILABLE still marks it down at once (for routing; the
next successful probe brings it back). A worker running in the same process (``videoqa serve``)
is probed by reading its health servicer directly rather than over gRPC: a stalled event loop
cannot fail that probe, so it reports exactly what the worker's own health says.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
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

#: An in-process health probe: whether the worker is SERVING, read without an RPC.
LocalProbe = Callable[[], Awaitable[bool]]


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
    #: Health probes failed in a row (0 after a successful one).
    failures: int = 0
    #: Set for a worker in this process: probed through it instead of the health RPC.
    local: LocalProbe | None = None

    def mark(self, healthy: bool) -> None:
        if healthy != self.healthy:
            log.info("worker %s is %s", self.address, "up" if healthy else "down")
            self.healthy, self.last_change = healthy, time.monotonic()

    def probed(self, ok: bool, failures_to_down: int, why: str = "") -> None:
        """Count a probe: up after one success, down after ``failures_to_down`` failures in a row."""
        if ok:
            self.failures = 0
            self.mark(True)
            return
        self.failures += 1
        if self.healthy and self.failures < failures_to_down:
            log.info(
                "worker %s failed a health probe (%d in a row of %d before it counts as down): %s",
                self.address,
                self.failures,
                failures_to_down,
                why,
            )
        if self.failures >= failures_to_down:
            self.mark(False)


class WorkerPool:
    """The workers a frontend routes to, with a background health probe.

    An address is ``host:port``, or ``dns:NAME:PORT``: every address ``NAME`` resolves to (a
    Kubernetes headless Service), re-resolved at each probe so that workers can come and go."""

    def __init__(
        self,
        addresses: list[str],
        probe_interval_s: float = 1.0,
        *,
        probe_timeout_s: float = 2.0,
        failures_to_down: int = 3,
        local_probes: Mapping[str, LocalProbe] | None = None,
    ):
        if not addresses:
            raise ValueError("a frontend needs at least one worker address")
        self._static = {a for a in addresses if not a.startswith("dns:")}
        self.names = [a.removeprefix("dns:") for a in dict.fromkeys(addresses) if a.startswith("dns:")]
        for name in self.names:
            host, _, port = name.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"worker address dns:{name}: expected dns:NAME:PORT")
        if failures_to_down < 1:
            raise ValueError("failures_to_down must be at least 1")
        self.workers: dict[str, WorkerHandle] = {}
        self._retired: list[tuple[float, WorkerHandle]] = []
        self._local = dict(local_probes or {})
        for address in dict.fromkeys(addresses):
            if not address.startswith("dns:"):
                self._add(address)
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.failures_to_down = failures_to_down
        self._probe_task: asyncio.Task | None = None
        self.changed = asyncio.Event()

    def _add(self, address: str) -> None:
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.workers[address] = WorkerHandle(
            address,
            channel,
            worker_pb2_grpc.WorkerStub(channel),
            health_pb2_grpc.HealthStub(channel),
            local=self._local.get(address),
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
        serving = health_pb2.HealthCheckResponse.SERVING

        async def check(worker: WorkerHandle) -> None:
            why = "NOT_SERVING"
            try:
                if worker.local is not None:
                    ok = await worker.local()
                else:
                    request = health_pb2.HealthCheckRequest(service=WORKER_SERVICE)
                    reply = await worker.health.Check(request, timeout=self.probe_timeout_s)
                    ok, why = reply.status == serving, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as error:
                ok, why = False, error.code().name
            except Exception as error:  # a local probe that raised
                log.warning("health probe of worker %s raised", worker.address, exc_info=error)
                ok, why = False, type(error).__name__
            worker.probed(ok, self.failures_to_down, why)

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
