"""Process entry points: ``videoqa serve`` (frontend + one worker), ``videoqa frontend``, ``videoqa worker``.

``serve`` runs both halves in one process: the worker listens on a loopback port of its own and
the frontend talks to it over the same internal gRPC API a separate worker would use, so the
single-machine default exercises the production code path (only the worker's health is read in
process rather than probed over gRPC: see :func:`start_serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from videoqa.internal.v1 import worker_pb2_grpc
from videoqa.service import logcontext
from videoqa.service.auth import ApiKeyFile, Authenticator, allow_all
from videoqa.service.frontend import FrontendServicer
from videoqa.service.lifecycle import Drain
from videoqa.service.metrics import Metrics
from videoqa.service.reflection import enable_server_reflection
from videoqa.service.routing import WORKER_SERVICE, LocalProbe, WorkerPool
from videoqa.v1 import videoqa_pb2, videoqa_pb2_grpc
from videoqa.worker.settings import WorkerSettings

log = logging.getLogger("videoqa")

PUBLIC_SERVICE = videoqa_pb2.DESCRIPTOR.services_by_name["VideoQA"].full_name
#: Health service name that is SERVING while the process runs (until it drains): for liveness probes.
LIVENESS = "liveness"


def package_version() -> str:
    try:
        return version("videoqa")
    except PackageNotFoundError:
        return "0+unknown"


class FrontendSettings(BaseSettings):
    """Public frontend configuration (``VIDEOQA_*`` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="VIDEOQA_", extra="ignore", use_attribute_docstrings=True)

    listen: str = "0.0.0.0:50051"
    """Address the public API listens on."""
    max_upload_bytes: int = Field(default=256 << 20, ge=1024, le=1 << 34)
    """Largest accepted upload (RESOURCE_EXHAUSTED beyond)."""
    max_images: int = Field(default=512, ge=1, le=100_000)
    """Most images in one image-sequence upload."""
    max_buffered_upload_bytes: int = Field(default=1 << 30, ge=1024, le=1 << 36)
    """Bytes of uploads held in memory at once across all calls; beyond, RESOURCE_EXHAUSTED."""
    probe_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often worker health is probed."""
    probe_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """How long one worker health probe may take; no answer by then counts as a failed probe."""
    probe_failures_to_down: int = Field(default=3, ge=1, le=100)
    """Consecutive failed health probes after which a worker counts as down (one successful probe
    brings it back); the frontend is NOT_SERVING while every worker is down. The in-process worker
    of ``videoqa serve`` is probed without an RPC, so it is down only while its own health is."""
    grace_s: float = Field(default=10.0, ge=0, le=3600)
    """How long in-flight calls may finish after SIGTERM (health is NOT_SERVING meanwhile)."""
    metrics_listen: str = "0.0.0.0:9464"
    """Address of the Prometheus ``/metrics`` endpoint; empty: no endpoint."""
    api_keys_file: str | None = None
    """JSON file mapping tenants to API keys (``{"tenant": ["key", ...]}``): bearer tokens required."""
    tls_cert_file: str | None = None
    """PEM certificate (chain) of the public port; with ``tls_key_file``, the port speaks TLS only."""
    tls_key_file: str | None = None
    """PEM private key of ``tls_cert_file``."""
    tls_client_ca_file: str | None = None
    """PEM CA bundle: clients must present a certificate it signed (mutual TLS)."""
    insecure: bool = False
    """Allow a public port with neither TLS nor API keys (local development only; logged loudly)."""
    health_listen: str | None = None
    """Extra plaintext port serving only ``grpc.health.v1.Health`` (for probes that cannot speak
    TLS, such as the kubelet's gRPC probes when the public port requires TLS)."""

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> FrontendSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    @property
    def secured(self) -> bool:
        return bool(self.api_keys_file or self.tls_cert_file)


def server_credentials(settings: FrontendSettings) -> grpc.ServerCredentials | None:
    """TLS credentials of the public port (client certificates required when a client CA is set)."""
    if not settings.tls_cert_file:
        return None
    with open(settings.tls_key_file, "rb") as key, open(settings.tls_cert_file, "rb") as cert:
        pair = (key.read(), cert.read())
    ca = None
    if settings.tls_client_ca_file:
        with open(settings.tls_client_ca_file, "rb") as f:
            ca = f.read()
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def authenticator_for(settings: FrontendSettings) -> Authenticator:
    return ApiKeyFile(settings.api_keys_file) if settings.api_keys_file else allow_all


def _server_options(max_bytes: int) -> list[tuple[str, int]]:
    # The frontend enforces the upload cap itself, per message the limit only needs to hold a chunk.
    limit = max(64 << 20, min(max_bytes + (1 << 20), (1 << 31) - 1))
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 64 << 20)]


@dataclass
class Running:
    """A started server: its port and what :meth:`stop` needs."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    servicer: object | None = None
    engine: object | None = None
    pool: WorkerPool | None = None
    tasks: tuple[asyncio.Task, ...] = ()
    #: Servers beside the main one (the plaintext health port), stopped with it.
    extra: tuple[grpc.aio.Server, ...] = ()
    drain: Drain | None = None

    async def serving(self, service: str = "") -> bool:
        """Whether this server's health says SERVING for ``service`` (one it registered), read in
        process: the health servicer's own ``Check``, no RPC, so a busy event loop cannot fail it."""
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=service), None)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def begin_drain(self) -> None:
        """NOT_SERVING at once; new calls are refused with UNAVAILABLE from now on."""
        await self.health.enter_graceful_shutdown()
        if self.drain is not None:
            self.drain.start()

    async def stop(self, grace: float | None = 1.0) -> None:
        """Drain (calls in flight get ``grace`` seconds to finish), then stop."""
        await self.begin_drain()
        if self.drain is not None and grace:
            await self.drain.wait(grace)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(self.server.stop(0.5), *(server.stop(0.5) for server in self.extra))
        if self.pool is not None:
            await self.pool.close()
        if self.engine is not None:
            self.engine.close()


def _interceptors(metrics: Metrics | None, component: str, drain: Drain) -> list:
    """Metrics outermost (they see the refusals of a draining server too), then the drain."""
    return [metrics.interceptor(component), drain] if metrics is not None else [drain]


async def start_worker(
    settings: WorkerSettings, listen: str = "127.0.0.1:0", engine=None, metrics: Metrics | None = None
) -> Running:
    """Start a worker's gRPC server at once (health NOT_SERVING) and load its models in the
    background; health turns SERVING when they are loaded."""
    from videoqa.service.worker_servicer import WorkerServicer
    from videoqa.worker.engine import Engine

    engine = engine or Engine(settings)
    if metrics is not None:
        metrics.watch_engine(engine)
    drain = Drain()
    server = grpc.aio.server(
        interceptors=_interceptors(metrics, "worker", drain), options=_server_options(settings.max_upload_bytes)
    )
    health_servicer = health.aio.HealthServicer()
    servicer = WorkerServicer(engine, package_version())
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_server_reflection((WORKER_SERVICE, health.SERVICE_NAME), server)
    for name in ("", WORKER_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port(listen)
    await server.start()

    async def load() -> None:
        try:
            if not engine.ready:
                await asyncio.to_thread(engine.load)
        except Exception:
            log.exception("model loading failed; the worker stays NOT_SERVING")
            return
        for name in ("", WORKER_SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("worker serving on port %d (models: %s)", port, ", ".join(settings.models))

    task = asyncio.create_task(load())
    return Running(server, port, health_servicer, servicer=servicer, engine=engine, tasks=(task,), drain=drain)


async def start_frontend(
    settings: FrontendSettings,
    workers: list[str],
    authenticate=None,
    metrics: Metrics | None = None,
    local_probes: Mapping[str, LocalProbe] | None = None,
) -> Running:
    """Start the public API (TLS and API keys as ``settings`` say; ``authenticate`` overrides the
    keys); health is SERVING while at least one worker is. ``local_probes``: workers in this
    process (by address), probed through the function given instead of the health RPC."""
    pool = WorkerPool(
        workers,
        probe_interval_s=settings.probe_interval_s,
        probe_timeout_s=settings.probe_timeout_s,
        failures_to_down=settings.probe_failures_to_down,
        local_probes=local_probes,
    )
    credentials = server_credentials(settings)
    drain = Drain()
    server = grpc.aio.server(
        # Request ids outermost: a refusal by the drain carries one too.
        interceptors=[logcontext.RequestIds(), *_interceptors(metrics, "frontend", drain)],
        options=_server_options(settings.max_upload_bytes),
    )
    servicer = FrontendServicer(
        pool,
        version=package_version(),
        max_upload_bytes=settings.max_upload_bytes,
        max_images=settings.max_images,
        max_buffered_upload_bytes=settings.max_buffered_upload_bytes,
        authenticate=authenticate or authenticator_for(settings),
    )
    videoqa_pb2_grpc.add_VideoQAServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_server_reflection((PUBLIC_SERVICE, health.SERVICE_NAME), server)
    for name in ("", PUBLIC_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    extra = ()
    if settings.health_listen:
        health_only = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_only)
        health_only.add_insecure_port(settings.health_listen)
        await health_only.start()
        extra = (health_only,)
    if credentials is not None:
        port = server.add_secure_port(settings.listen, credentials)
    else:
        port = server.add_insecure_port(settings.listen)
    await server.start()
    pool.start()

    async def follow_workers() -> None:
        serving = None
        while True:
            await pool.changed.wait()
            pool.changed.clear()
            if pool.any_healthy != serving:
                serving = pool.any_healthy
                status = (
                    health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ("", PUBLIC_SERVICE):
                    await health_servicer.set(name, status)
                log.info("frontend on port %d is %s", port, "SERVING" if serving else "NOT_SERVING")

    task = asyncio.create_task(follow_workers())
    return Running(server, port, health_servicer, servicer=servicer, pool=pool, tasks=(task,), extra=extra, drain=drain)


async def start_serve(
    worker_settings: WorkerSettings, frontend_settings: FrontendSettings, metrics: Metrics | None = None
) -> tuple[Running, Running]:
    """Frontend plus one in-process worker on a private loopback port (one set of metrics).

    Calls go to the worker over gRPC; its health is read in process (a probe RPC that times out
    while the shared event loop is busy must not make the frontend NOT_SERVING)."""
    worker = await start_worker(worker_settings, "127.0.0.1:0", metrics=metrics)
    address = f"127.0.0.1:{worker.port}"
    local = {address: functools.partial(worker.serving, WORKER_SERVICE)}
    frontend = await start_frontend(frontend_settings, [address], metrics=metrics, local_probes=local)
    return frontend, worker


async def shutdown(running: list[Running], grace: float) -> None:
    """Drain every server together: all NOT_SERVING and refusing new calls first, then the calls
    in flight get ``grace`` seconds, then they stop."""
    for server in running:
        await server.begin_drain()
    await asyncio.gather(*(server.stop(grace) for server in running))


# --- command line ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videoqa", description="videoqa server processes")
    sub = parser.add_subparsers(dest="command", required=True)

    def worker_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", action="append", dest="models", help="model id or directory (repeatable)")
        p.add_argument("--redis-url", help="keep sessions in Redis (redis://host:6379/0, rediss:// for TLS)")
        p.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])

    def public_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--listen", help="public address (default 0.0.0.0:50051)")
        p.add_argument(
            "--insecure",
            action="store_true",
            default=None,
            help="allow a public port with neither TLS nor API keys (local development only)",
        )

    serve = sub.add_parser("serve", help="frontend and one worker in one process (the default)")
    public_flags(serve)
    worker_flags(serve)
    frontend = sub.add_parser("frontend", help="public API routing to separate workers")
    public_flags(frontend)
    frontend.add_argument(
        "--worker", action="append", dest="workers", required=True, help="worker host:port, or dns:NAME:PORT"
    )
    worker = sub.add_parser("worker", help="a model worker (internal API)")
    worker.add_argument("--listen", default="0.0.0.0:50061", help="internal address (default 0.0.0.0:50061)")
    worker_flags(worker)
    for p in (serve, frontend, worker):
        p.add_argument("--metrics-listen", help="Prometheus /metrics address (default 0.0.0.0:9464; '' turns it off)")
        p.add_argument("--log-level", default="INFO")
    return parser


def _worker_settings(args: argparse.Namespace) -> WorkerSettings:
    overrides = {k: v for k in ("models", "device", "dtype", "redis_url") if (v := getattr(args, k, None))}
    return WorkerSettings(**overrides)


def _frontend_settings(args: argparse.Namespace) -> FrontendSettings:
    overrides = {k: v for k in ("listen", "insecure", "metrics_listen") if (v := getattr(args, k, None)) is not None}
    if args.command == "worker":
        overrides.pop("listen", None)
    return FrontendSettings(**overrides)


def check_security(settings: FrontendSettings) -> None:
    """Refuse an open public port unless asked for explicitly; warn loudly when it is."""
    if settings.secured:
        return
    if not settings.insecure:
        raise SystemExit(
            "videoqa: refusing to start a public port with neither TLS nor API keys. Configure "
            "VIDEOQA_TLS_CERT_FILE/VIDEOQA_TLS_KEY_FILE and/or VIDEOQA_API_KEYS_FILE (docs/operations.md), "
            "or pass --insecure (VIDEOQA_INSECURE=true) for local development."
        )
    log.warning(
        "INSECURE MODE: the public port %s has no TLS and no authentication; anyone who can reach it can "
        "use it. For local development only.",
        settings.listen,
    )


async def _run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    running: list[Running] = []
    public = _frontend_settings(args)
    if args.command != "worker":
        check_security(public)
    metrics = Metrics()
    metrics.set_build_info(package_version())
    if public.metrics_listen:
        log.info("metrics on http://%s/metrics", public.metrics_listen.replace("0.0.0.0", "localhost"))
        metrics.serve(public.metrics_listen)
    if args.command == "serve":
        settings = _worker_settings(args)
        frontend, worker = await start_serve(settings, public, metrics)
        running = [frontend, worker]
        log.info(
            "videoqa %s listening on port %d; model %s loading", package_version(), frontend.port, settings.models[0]
        )
        if settings.redis_url:
            log.info("sessions are stored in Redis at %s", settings.redis_url.split("@")[-1])
        else:
            log.info("sessions are kept in memory in this process (they do not survive a restart)")
    elif args.command == "frontend":
        frontend = await start_frontend(public, args.workers, metrics=metrics)
        running = [frontend]
        log.info("frontend listening on port %d, workers: %s", frontend.port, ", ".join(args.workers))
    else:
        settings = _worker_settings(args)
        worker = await start_worker(settings, args.listen, metrics=metrics)
        running = [worker]
        log.info("worker listening on port %d; loading %s", worker.port, ", ".join(settings.models))
    await stop.wait()
    log.info("draining: NOT_SERVING now; calls in flight have %.0fs to finish", public.grace_s)
    await shutdown(running, public.grace_s)
    metrics.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=logcontext.FORMAT)
    logcontext.install()  # the request id and session id of the call on each line logged during one
    asyncio.run(_run(args))
    return 0


__all__ = [
    "FrontendSettings",
    "Running",
    "check_security",
    "main",
    "shutdown",
    "start_frontend",
    "start_serve",
    "start_worker",
]
