"""Turns of several sessions decode together, with answers equal to decoding them one by one; the
KV budget bounds how many run at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tests.conftest import wait_serving
from tests.media import make_video
from tests.service.helpers import events, spec, upload
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc

QUESTIONS = ["what is it?", "describe the colours", "how many frames?", "anything moving?"]
TOKENS = 24


@pytest.fixture()
def serve(loop_thread):
    """``serve(**worker_settings) -> (address, engine)``."""
    from videoqa.service.app import FrontendSettings, start_serve
    from videoqa.worker.settings import WorkerSettings

    started = []

    def start(**settings):
        frontend, worker = loop_thread.run(
            start_serve(
                WorkerSettings(models=["tiny-qwen2-vl"], **settings),
                FrontendSettings(listen="127.0.0.1:0", probe_interval_s=0.1),
            )
        )
        started.extend([frontend, worker])
        address = f"127.0.0.1:{frontend.port}"
        wait_serving(address)
        return address, worker.engine

    yield start
    for running in started:
        loop_thread.run(running.stop(0))


#: hae's decode bin moving entries every other token (the batch is rebuilt around a rewritten row).
PARAMS = {"hae": {"interval": 2, "evict_below": 0.95, "restore_above": 1.05, "decay": 0.5}}


def sessions(stub, videos: list[bytes], method: str) -> list[str]:
    pruning = pb.PruningSpec(method=method, budget=0.5 if method != "full" else 1.0, params=PARAMS.get(method, {}))
    return [
        events(stub.CreateSession(upload(spec(frames=4 + 2 * i, pruning=pruning), video=v), timeout=60))["session"][
            0
        ].session.session_id
        for i, v in enumerate(videos)
    ]


def answer(stub, session_id: str, question: str) -> list[int]:
    request = pb.AskRequest(
        session_id=session_id, question=question, generation=pb.GenerationParams(max_new_tokens=TOKENS)
    )
    return [t.token_id for t in events(stub.Ask(request, timeout=120))["token"]]


def test_concurrent_turns_decode_together_and_answer_as_alone(serve):
    address, engine = serve(max_batch_size=8)
    videos = [make_video(None, frames=10 + i, size=(64, 48), fps=8) for i in range(4)]
    methods = ["full", "das", "snapkv", "pyramidkv", "hae", "retentive_kv"]
    with grpc.insecure_channel(address) as channel:
        stub = videoqa_pb2_grpc.VideoQAStub(channel)
        alone = {}
        for method in methods:  # the same sessions twice: once asked one at a time, once all at once
            for session_id, question in zip(sessions(stub, videos, method), QUESTIONS, strict=True):
                alone[(method, question)] = answer(stub, session_id, question)
        scheduler = engine.scheduler
        steps, rows = scheduler.steps, scheduler.rows
        jobs = [(sid, q, m) for m in methods for sid, q in zip(sessions(stub, videos, m), QUESTIONS, strict=True)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(lambda job: answer(stub, job[0], job[1]), jobs))
    for (_, question, method), tokens in zip(jobs, together, strict=True):
        assert tokens == alone[(method, question)], (method, question)
    batched_rows, batched_steps = scheduler.rows - rows, scheduler.steps - steps
    assert batched_rows / batched_steps > 2, "the concurrent turns were not decoded together"
    assert scheduler.largest_batch <= 8


def test_the_kv_budget_bounds_the_turns_running_at_once(serve):
    # one session's answer fits, two do not: turns run one after another, and all complete
    address, engine = serve(kv_budget_bytes=1)
    videos = [make_video(None, frames=8 + i, size=(64, 48), fps=8) for i in range(3)]
    with grpc.insecure_channel(address) as channel:
        stub = videoqa_pb2_grpc.VideoQAStub(channel)
        ids = sessions(stub, videos, "full")
        scheduler = engine.scheduler
        scheduler.most_running = 0
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda sid: answer(stub, sid, "go"), ids))
    assert all(len(a) >= 1 for a in answers)
    assert scheduler.most_running == 1 and scheduler.largest_batch == 1


def test_a_budget_for_two_runs_at_most_two(serve):
    address, engine = serve()
    videos = [make_video(None, frames=8 + i, size=(64, 48), fps=8) for i in range(3)]
    with grpc.insecure_channel(address) as channel:
        stub = videoqa_pb2_grpc.VideoQAStub(channel)
        ids = sessions(stub, videos, "full")
        per_token = engine.models["tiny-qwen2-vl"].kv_bytes_per_token
        reserve = sorted(engine.sessions.estimate_bytes(i) + TOKENS * per_token for i in ids)
        scheduler = engine.scheduler
        scheduler.kv_budget_bytes = reserve[1] + reserve[2]  # any two fit, never three
        scheduler.most_running = 0
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda sid: answer(stub, sid, "go"), ids))
    assert all(answers) and scheduler.most_running <= 2
