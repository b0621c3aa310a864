"""Fixtures of the service tests that run workers on Redis."""

from __future__ import annotations

import pytest

from tests.conftest import wait_serving
from videoqa.service.routing import WORKER_SERVICE


@pytest.fixture()
def start_pair(loop_thread, redis_server):
    """``start_pair(**worker_settings) -> (address, running worker)``: a worker on Redis with its own frontend."""
    from videoqa.service.app import FrontendSettings, start_frontend, start_worker
    from videoqa.worker.settings import WorkerSettings

    started = []

    def start(authenticate=None, **overrides):
        settings = WorkerSettings(**{"models": ["tiny-qwen2-vl"], "redis_url": redis_server.url, **overrides})
        worker = loop_thread.run(start_worker(settings, "127.0.0.1:0"))
        wait_serving(f"127.0.0.1:{worker.port}", WORKER_SERVICE)
        frontend = loop_thread.run(
            start_frontend(
                FrontendSettings(listen="127.0.0.1:0", probe_interval_s=0.1), [f"127.0.0.1:{worker.port}"], authenticate
            )
        )
        address = f"127.0.0.1:{frontend.port}"
        wait_serving(address)
        started.extend([frontend, worker])
        return address, worker

    yield start
    for running in started:
        loop_thread.run(running.stop(0))
