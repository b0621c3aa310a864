"""Metrics: a real frontend + worker with a metrics endpoint, driven over gRPC, scraped over HTTP."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_serving
from tests.media import make_video
from tests.service.helpers import events, spec, upload
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc

FORBIDDEN_LABELS = {"session_id", "session", "tenant", "request_id"}


@pytest.fixture(scope="module")
def served(loop_thread, tmp_path_factory):
    """``serve`` with its own Metrics on a free port: (gRPC address, metrics URL, Metrics)."""
    from videoqa.service.app import FrontendSettings, start_serve
    from videoqa.service.metrics import Metrics
    from videoqa.worker.settings import WorkerSettings

    metrics = Metrics()
    metrics.set_build_info("test")
    frontend, worker = loop_thread.run(
        start_serve(
            WorkerSettings(models=["tiny-qwen2-vl"]),
            FrontendSettings(listen="127.0.0.1:0", probe_interval_s=0.1),
            metrics,
        )
    )
    port = metrics.serve("127.0.0.1:0")
    address = f"127.0.0.1:{frontend.port}"
    wait_serving(address)
    yield address, f"http://127.0.0.1:{port}/metrics", metrics
    metrics.close()
    loop_thread.run(frontend.stop(0))
    loop_thread.run(worker.stop(0))


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample: (name, labels) -> value."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_turns_show_up_in_the_metrics(served, tmp_path):
    address, url, _ = served
    video = tmp_path / "v.mp4"
    make_video(video, frames=16, size=(64, 48), fps=8)
    before = scrape(url)
    with grpc.insecure_channel(address) as channel:
        stub = videoqa_pb2_grpc.VideoQAStub(channel)
        created = events(
            stub.CreateSession(upload(spec(question="what?", max_new_tokens=5), video=video.read_bytes()), timeout=120)
        )
        session_id = created["session"][0].session.session_id
        followup = events(
            stub.Ask(
                pb.AskRequest(session_id=session_id, question="and?", generation=pb.GenerationParams(max_new_tokens=4)),
                timeout=60,
            )
        )
        with pytest.raises(grpc.RpcError) as missing:
            list(stub.Ask(pb.AskRequest(session_id="nope", question="?"), timeout=10))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # context.abort() sends the status before the interceptor's count runs: wait for it (bounded)
    refused = {"component": "frontend", "rpc": "Ask", "code": "NOT_FOUND"}
    deadline = time.monotonic() + 10
    while (
        value(after := scrape(url), "videoqa_requests_total", **refused)
        == value(before, "videoqa_requests_total", **refused)
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)

    def grew(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    first, second = created["stats"][0], followup["stats"][0]
    for component in ("frontend", "worker"):
        assert grew("videoqa_requests_total", component=component, rpc="CreateSession", code="OK") == 1
        assert grew("videoqa_requests_total", component=component, rpc="Ask", code="OK") == 1
        assert grew("videoqa_request_duration_seconds_count", component=component, rpc="Ask") >= 1
    # the unknown session id is refused by the frontend itself (it never reaches a worker)
    assert grew("videoqa_requests_total", component="frontend", rpc="Ask", code="NOT_FOUND") == 1
    labels = {"model": "tiny-qwen2-vl", "method": created["session"][0].session.pruning.method}
    assert grew("videoqa_time_to_first_token_seconds_count", turn="first", **labels) == 1
    assert grew("videoqa_time_to_first_token_seconds_count", turn="followup", **labels) == 1
    assert grew("videoqa_time_to_first_token_seconds_sum", turn="first") > 0
    tokens = first.generated_tokens + second.generated_tokens
    assert grew("videoqa_generated_tokens_total", **labels) == tokens
    assert grew("videoqa_inter_token_latency_seconds_count", **labels) == tokens - 2  # one gap fewer per turn
    session = created["session"][0].session  # as built, before the first answer grew the cache
    per_token = first.kv_bytes_before // first.context_length
    assert grew("videoqa_kv_cache_bytes_sum", state="full") == session.context_length * per_token
    assert grew("videoqa_kv_cache_bytes_sum", state="compressed") == session.kv_bytes
    assert grew("videoqa_visual_tokens_total", state="input") == first.visual_tokens_before
    assert grew("videoqa_visual_tokens_total", state="kept") == first.visual_tokens_after
    assert grew("videoqa_frames_per_request_sum") == first.frames_used
    for stage in ("frame_decode", "vision_encode", "prefill", "prune"):
        assert grew(f"videoqa_{stage}_seconds_count") == 1, stage
    assert grew("videoqa_session_lookups_total", result="hit-hot") == 1
    assert grew("videoqa_sessions_created_total") == 1
    assert grew("videoqa_session_store_seconds_count", backend="memory", op="create") == 1
    assert grew("videoqa_session_serialize_seconds_count", op="encode") == 3  # the prefix, then a delta per turn
    assert grew("videoqa_turns_total", outcome="completed") == 2
    assert value(after, "videoqa_sessions_active") >= 1 and value(after, "videoqa_turns_running") == 0
    assert value(after, "videoqa_model_info", model="tiny-qwen2-vl", family="qwen2_vl") == 1
    assert value(after, "videoqa_build_info", version="test") == 1


def test_no_unbounded_labels_and_no_health_calls(served):
    address, url, _ = served
    wait_serving(address)  # health checks are not counted as requests
    samples = scrape(url)
    names = {name for name, _ in samples}
    assert all(name.startswith("videoqa_") for name in names if not name.startswith(("python_", "process_")))
    for _, labels in samples:
        assert not FORBIDDEN_LABELS & {k for k, _ in labels}
    assert not [ls for (n, ls) in samples if n == "videoqa_requests_total" and ("rpc", "Check") in ls]


def test_a_cancelled_stream_is_counted_as_cancelled(served, tmp_path):
    address, url, _ = served
    video = tmp_path / "v.mp4"
    make_video(video, frames=8, size=(64, 48), fps=8)
    before = scrape(url)
    with grpc.insecure_channel(address) as channel:
        stub = videoqa_pb2_grpc.VideoQAStub(channel)
        created = events(stub.CreateSession(upload(spec(), video=video.read_bytes()), timeout=120))
        session_id = created["session"][0].session.session_id
        call = stub.Ask(
            pb.AskRequest(session_id=session_id, question="go", generation=pb.GenerationParams(max_new_tokens=1000)),
            timeout=60,
        )
        for response in call:
            if response.HasField("token"):
                call.cancel()
                break
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = scrape(url)
        if value(after, "videoqa_requests_total", component="worker", rpc="Ask", code="CANCELLED") > value(
            before, "videoqa_requests_total", component="worker", rpc="Ask", code="CANCELLED"
        ):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the cancelled Ask was not counted as CANCELLED")
    assert value(after, "videoqa_requests_in_flight", rpc="Ask") == 0


def test_gpu_memory_series_on_cuda_devices(monkeypatch):
    """No GPU here: torch.cuda's memory functions are stood in for, to check what is exported
    for a model on ``cuda:0`` (and that nothing is exported for CPU models)."""
    from types import SimpleNamespace

    import torch

    from videoqa.service.metrics import _gpu_memory

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3 << 20)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 4 << 20)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 5 << 20)
    gpu, cpu = torch.device("cuda:0"), torch.device("cpu")
    engine = SimpleNamespace(models={"a": SimpleNamespace(device=gpu), "b": SimpleNamespace(device=cpu)})
    exported = {
        family.name: [(sample.labels, sample.value) for sample in family.samples] for family in _gpu_memory(engine)
    }
    assert exported == {
        "videoqa_gpu_memory_allocated_bytes": [({"device": "cuda:0"}, 3 << 20)],
        "videoqa_gpu_memory_reserved_bytes": [({"device": "cuda:0"}, 4 << 20)],
        "videoqa_gpu_memory_total_bytes": [({"device": "cuda:0"}, 80 << 30)],
    }
    assert list(_gpu_memory(SimpleNamespace(models={"b": SimpleNamespace(device=cpu)}))) == []
