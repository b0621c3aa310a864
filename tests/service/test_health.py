"""Health is NOT_SERVING until the model is loaded, on the worker and on the frontend in front of it."""

from __future__ import annotations

import threading
import time

import grpc
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
