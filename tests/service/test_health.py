"""Health is NOT_SERVING until the model is loaded, on the worker and on the frontend in front of it."""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import wait_serving
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return reply.status


def test_serving_only_after_model_load(loop_thread):
    from videoqa.service.app import FrontendSettings, start_frontend, start_worker
    from videoqa.worker.engine import Engine
    from videoqa.worker.settings import WorkerSettings

    release = threading.Event()

    class SlowEngine(Engine):
        def load(self) -> None:
            release.wait(60)
            super().load()

    settings = WorkerSettings(models=["tiny-qwen2-vl"])
    worker = loop_thread.run(start_worker(settings, "127.0.0.1:0", engine=SlowEngine(settings)))
    worker_address = f"127.0.0.1:{worker.port}"
    frontend = loop_thread.run(
        start_frontend(FrontendSettings(listen="127.0.0.1:0", probe_interval_s=0.05), [worker_address])
    )
    address = f"127.0.0.1:{frontend.port}"
    try:
        time.sleep(0.5)  # several probe rounds while the model is "loading"
        assert status(worker_address) == NOT_SERVING
        assert status(worker_address, "videoqa.internal.v1.Worker") == NOT_SERVING
        assert status(address) == NOT_SERVING
        assert status(address, "videoqa.v1.VideoQA") == NOT_SERVING
        with grpc.insecure_channel(address) as channel:  # calls meanwhile are UNAVAILABLE (retryable)
            try:
                videoqa_pb2_grpc.VideoQAStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
                raise AssertionError("expected UNAVAILABLE while loading")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
        release.set()
        wait_serving(worker_address, "videoqa.internal.v1.Worker", timeout=60)
        wait_serving(address, "videoqa.v1.VideoQA", timeout=60)
        assert status(address) == SERVING
    finally:
        release.set()
        loop_thread.run(frontend.stop(0))
        loop_thread.run(worker.stop(0))


# --- hysteresis: one lost probe does not flip the frontend ------------------------------------------------


class ScriptedHealth(health_pb2_grpc.HealthServicer):
    """A worker's health that answers from a script: ``ok``, ``fail`` (NOT_SERVING) or ``slow`` (an
    answer after the prober's deadline); ``default`` once the script is used up. Counts the checks."""

    def __init__(self) -> None:
        self.script: collections.deque[str] = collections.deque()
        self.default = "ok"
        self.checks = 0

    async def Check(self, request, context):
        self.checks += 1
        answer = self.script.popleft() if self.script else self.default
        if answer == "slow":
            await asyncio.sleep(1.0)
        return health_pb2.HealthCheckResponse(status=SERVING if answer == "ok" else NOT_SERVING)


@pytest.fixture()
def scripted_frontend(loop_thread):
    """A frontend (probes every 20 ms, 300 ms timeout, down after 3 failures) in front of a
    health-only fake worker; yields the fake's servicer, the frontend and the transitions its
    health went through as ``(status, checks answered by then)``."""
    from videoqa.service.app import FrontendSettings, start_frontend

    fake = ScriptedHealth()

    async def start_fake():
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    fake_server, fake_port = loop_thread.run(start_fake())
    settings = FrontendSettings(
        listen="127.0.0.1:0", probe_interval_s=0.02, probe_timeout_s=0.3, probe_failures_to_down=3
    )
    frontend = loop_thread.run(start_frontend(settings, [f"127.0.0.1:{fake_port}"]))
    transitions: list[tuple[int, int]] = []
    original = frontend.health.set

    async def recording(service, status):
        if service == "":
            transitions.append((status, fake.checks))
        await original(service, status)

    frontend.health.set = recording
    wait_serving(f"127.0.0.1:{frontend.port}")
    try:
        yield fake, frontend, transitions
    finally:
        loop_thread.run(frontend.stop(0))
        loop_thread.run(fake_server.stop(0))


def wait_checks(fake: ScriptedHealth, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while fake.checks < count:
        assert time.monotonic() < deadline, f"only {fake.checks} probes, expected {count}"
        time.sleep(0.01)


def test_fewer_failed_probes_than_the_threshold_do_not_flip_the_frontend(scripted_frontend):
    fake, frontend, transitions = scripted_frontend
    address = f"127.0.0.1:{frontend.port}"
    transitions.clear()
    for script in (["fail"], ["fail", "fail"], ["fail", "slow"], ["slow"]):  # 1 or 2 in a row, < 3
        fake.script.extend(script)
        wait_checks(fake, fake.checks + len(script) + 3)  # the failures, then some successes
        assert not transitions, f"{script}: the frontend changed health {transitions}"
        assert status(address) == SERVING


def test_consecutive_failed_probes_flip_it_and_one_success_brings_it_back(scripted_frontend):
    fake, frontend, transitions = scripted_frontend
    address = f"127.0.0.1:{frontend.port}"
    transitions.clear()
    start = fake.checks
    fake.script.extend(["fail", "slow", "fail"])  # three in a row (one a timeout), then ok again
    wait_checks(fake, start + 5)
    assert transitions == [(NOT_SERVING, start + 3), (SERVING, start + 4)]
    assert status(address) == SERVING

    transitions.clear()
    fake.default = "fail"  # down for good ...
    deadline = time.monotonic() + 20
    while not transitions:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert status(address) == NOT_SERVING
    (_, failed_at) = transitions[0]
    fake.script.append("ok")  # ... but for one successful probe
    wait_checks(fake, failed_at + 10)
    (_, up_at), (_, down_again_at) = transitions[1], transitions[2]
    assert [t[0] for t in transitions[:3]] == [NOT_SERVING, SERVING, NOT_SERVING]
    assert down_again_at == up_at + 3


def test_serve_stays_serving_while_its_worker_is_alive(loop_thread):
    """``serve`` reads its in-process worker's health directly: even probes that could never answer
    in time over gRPC (1 ms) with no tolerance (down after one failure) leave it SERVING; the
    worker's own NOT_SERVING still propagates."""
    from videoqa.service.app import FrontendSettings, start_serve
    from videoqa.worker.settings import WorkerSettings

    settings = FrontendSettings(
        listen="127.0.0.1:0", probe_interval_s=0.01, probe_timeout_s=0.001, probe_failures_to_down=1
    )
    frontend, worker = loop_thread.run(start_serve(WorkerSettings(models=["tiny-qwen2-vl"]), settings))
    address = f"127.0.0.1:{frontend.port}"
    try:
        wait_serving(address, timeout=60)
        transitions = []
        original = frontend.health.set

        async def recording(service, status):
            transitions.append(status)
            await original(service, status)

        frontend.health.set = recording
        loop_thread.loop.call_soon_threadsafe(time.sleep, 0.2)  # a stalled event loop, as under load
        time.sleep(1.0)  # ~100 probes
        assert not transitions and status(address) == SERVING
        loop_thread.run(worker.begin_drain())
        deadline = time.monotonic() + 10
        while status(address) != NOT_SERVING:
            assert time.monotonic() < deadline, "the frontend did not follow its worker to NOT_SERVING"
            time.sleep(0.02)
    finally:
        loop_thread.run(frontend.stop(0))
        loop_thread.run(worker.stop(0))
