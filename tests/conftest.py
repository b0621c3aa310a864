"""Shared fixtures: tiny models built once per run, and real servers on loopback ports."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time

import grpc
import pytest

from tests import preflight

FAMILIES = ["tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-llava-onevision", "tiny-qwen3-vl", "tiny-qwen3.5"]
#: Qwen3-VL's mixture-of-experts variant: the invariants of the model code paths (its attention,
#: positions and cache are Qwen3-VL's), not every pruning test again.
WITH_MOE = [*FAMILIES, "tiny-qwen3-vl-moe", "tiny-qwen3.5-moe"]


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(model_id) -> LoadedModel``, cached for the whole run."""
    from videoqa.worker.model.loader import load_model

    return functools.lru_cache(maxsize=None)(load_model)


class EventLoopThread:
    """An asyncio loop in a background thread, hosting grpc.aio servers for synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def wait_serving(address: str, service: str = "", timeout: float = 120.0) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{address} never became SERVING")


@pytest.fixture(scope="session")
def loop_thread():
    thread = EventLoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def server(loop_thread):
    """One ``serve`` process-equivalent (frontend + worker) with a tiny model of every family.

    Yields an object with ``address``, ``frontend``, ``worker`` (the ``Running`` handles) and
    ``engine``. Small limits make the bad-input tests cheap.
    """
    from videoqa.service.app import FrontendSettings, start_serve
    from videoqa.worker.settings import WorkerSettings

    worker_settings = WorkerSettings(
        models=FAMILIES,
        max_upload_bytes=4 << 20,
        max_frames=16,
        max_question_chars=500,
        max_new_tokens=4096,
        default_max_new_tokens=8,
        decode_timeout_s=60,
    )
    frontend_settings = FrontendSettings(listen="127.0.0.1:0", max_upload_bytes=4 << 20, probe_interval_s=0.2)
    frontend, worker = loop_thread.run(start_serve(worker_settings, frontend_settings))

    class Handle:
        address = f"127.0.0.1:{frontend.port}"

        @staticmethod
        def budgets() -> tuple[int, int]:
            """Upload bytes still taken from the frontend's and the worker's budgets."""
            return frontend.servicer.uploads.used, worker.servicer.uploads.used

    handle = Handle()
    handle.frontend, handle.worker, handle.engine = frontend, worker, worker.engine
    wait_serving(handle.address)
    yield handle
    loop_thread.run(frontend.stop(0))
    loop_thread.run(worker.stop(0))


@pytest.fixture()
def stub(server):
    from videoqa.v1 import videoqa_pb2_grpc

    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield videoqa_pb2_grpc.VideoQAStub(channel)


class RedisServer:
    """A private redis-server for the tests (AOF on, so a kill and restart keeps the data)."""

    def __init__(self, directory) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.directory = directory
        self.process = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import subprocess

        binary = preflight.require("redis-server")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except Exception:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A private Redis Cluster (3 masters, 1 replica each; ``tests/redis_cluster.py``), started once
    per run. Tests that kill nodes start their own ``LocalRedisCluster`` instead of this one."""
    from tests.redis_cluster import LocalRedisCluster

    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
    except FileNotFoundError as error:  # redis-server or redis-cli missing: say which
        pytest.fail(str(error), pytrace=False)
    yield cluster
    cluster.stop()


# -- under `make test` (VIDEOQA_REQUIRE_ALL=1) a skip is a failure --------------------------------------------


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "may_skip(reason): the test may skip under `make test` too (what it needs is never set up by it)",
    )


def _fail_a_skip(report, exempt: bool) -> None:
    if not report.skipped or exempt or hasattr(report, "wasxfail") or not os.environ.get(preflight.REQUIRE_ALL):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under {preflight.REQUIRE_ALL}=1 (make test), which runs every test: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``make test`` a test that skips (a missing program, a missing module, a ``skipif``) fails
    instead, so nothing is left untested silently; ``@pytest.mark.may_skip`` exempts a test."""
    outcome = yield
    _fail_a_skip(outcome.get_result(), exempt=item.get_closest_marker("may_skip") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped while it is collected (``pytest.importorskip`` at the top)."""
    outcome = yield
    _fail_a_skip(outcome.get_result(), exempt=False)
