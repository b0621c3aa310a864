"""The README flow with real processes: `videoqa serve` (and worker + frontend apart) answering the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_serving
from tests.media import make_video
from videoqa.lab.sample import normalize

VIDEOQA = str(Path(sys.executable).parent / "videoqa")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``videoqa COMMAND``: public ports in the explicit insecure mode and no metrics endpoint,
    unless ``args`` say otherwise (a repeated flag's last value wins)."""
    defaults = ["--metrics-listen", ""] + (["--insecure"] if command != "worker" else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen(
        [VIDEOQA, command, *defaults, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"did not exit on SIGTERM:\n{output}")
    assert process.returncode == 0, output
    return output


def ask(address: str, video: Path, *extra: str, question: str = "What is in the video?") -> dict:
    result = subprocess.run(
        [
            VIDEOQA,
            "ask",
            str(video),
            question,
            "--server",
            address,
            "--frames",
            "8",
            "--max-new-tokens",
            "8",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("media") / "demo.mp4"
    make_video(path, frames=48, size=(160, 120), fps=24)
    return path


def test_serve_answers_the_readme_demo_right(tmp_path):
    """`make demo`: a suite video, its question, the embedded default model; the answer is right."""
    demo = tmp_path / "demo.mp4"
    made = subprocess.run(
        [sys.executable, "-m", "videoqa.lab.suite_v2", str(demo), "--family", "needle", "--frames", "16"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    question, expected = made.stdout.strip(), made.stderr.strip().rsplit("expected answer: ", 1)[1]
    port = free_port()
    server = start("serve", "--listen", f"127.0.0.1:{port}")
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=180)
        reply = ask(f"127.0.0.1:{port}", demo, "--frames", "16", question=question)
        assert reply["session_id"] and normalize(reply["answer"]) == expected
        assert reply["stats"]["frames_used"] == 16 and reply["stats"]["generated_tokens"] >= 1
        info = subprocess.run(
            [VIDEOQA, "info", "--server", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60
        )
        assert info.returncode == 0 and "videoqa-demo" in info.stdout
    finally:
        output = stop(server)
    assert "sessions are kept in memory" in output


def test_worker_and_frontend_apart(video):
    worker_port, frontend_port = free_port(), free_port()
    worker = start("worker", "--listen", f"127.0.0.1:{worker_port}", "--model", "tiny-llava-onevision")
    frontend = start("frontend", "--listen", f"127.0.0.1:{frontend_port}", "--worker", f"127.0.0.1:{worker_port}")
    try:
        wait_serving(f"127.0.0.1:{frontend_port}", timeout=180)
        reply = ask(f"127.0.0.1:{frontend_port}", video)
        assert reply["stats"]["frames_used"] == 8
    finally:
        stop(frontend)
        stop(worker)


def test_session_survives_a_restart_of_the_whole_service(video, redis_server):
    from videoqa.client import FrameSampling, Generation, Pruning, VideoQAClient

    port = free_port()
    args = ("serve", "--listen", f"127.0.0.1:{port}", "--redis-url", redis_server.url)
    server = start(*args)
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=180)
        with VideoQAClient(f"127.0.0.1:{port}") as client:
            session = client.create_session(
                str(video), sampling=FrameSampling(num_frames=8), pruning=Pruning(method="das", budget=0.3)
            )
            first = session.ask_text("what is in the video?", max_new_tokens=4)
    finally:
        output = stop(server)
    assert "stored in Redis" in output
    server = start(*args)
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=180)
        with VideoQAClient(f"127.0.0.1:{port}") as client:
            again = client.session(session.id)
            assert again.info.turns == 1
            second = again.ask_text("and then?", generation=Generation(max_new_tokens=4))
            assert second.stats.turn == 2 and first.stats.turn == 1
            again.delete()
    finally:
        stop(server)


def test_two_processes_share_sessions_through_redis(video, redis_server):
    """Created in one `videoqa serve` process, continued in another: answers equal a live session."""
    from videoqa.client import FrameSampling, Generation, Pruning, VideoQAClient

    ports = [free_port(), free_port()]
    servers = [start("serve", "--listen", f"127.0.0.1:{p}", "--redis-url", redis_server.url) for p in ports]
    try:
        for port in ports:
            wait_serving(f"127.0.0.1:{port}", timeout=180)
        options = dict(
            sampling=FrameSampling(num_frames=8),
            pruning=Pruning(method="das", budget=0.3),
            question="what is in the video?",
            generation=Generation(max_new_tokens=5),
        )
        follow = Generation(max_new_tokens=5)
        with VideoQAClient(f"127.0.0.1:{ports[0]}") as a, VideoQAClient(f"127.0.0.1:{ports[1]}") as b:
            live = a.create_session(str(video), **options)
            live_turns = [live.first_answer, live.ask_text("and then?", generation=follow)]
            moved = a.create_session(str(video), **options)
            moved_turns = [moved.first_answer, b.session(moved.id).ask_text("and then?", generation=follow)]
            assert [t.text for t in moved_turns] == [t.text for t in live_turns]
            assert [tok.token_id for tok in moved_turns[1].tokens] == [tok.token_id for tok in live_turns[1].tokens]
            assert moved_turns[1].stats.turn == 2
            live.delete()
            moved.delete()
    finally:
        for server in servers:
            stop(server)


def test_sigterm_drains_a_streamed_answer_and_refuses_new_calls(video):
    """SIGTERM mid-answer: health goes NOT_SERVING, new calls are UNAVAILABLE,
    the answer in flight streams to its end within the grace period, and the process exits 0."""
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.service.helpers import events, spec, upload
    from videoqa.v1 import videoqa_pb2 as pb
    from videoqa.v1 import videoqa_pb2_grpc

    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {"VIDEOQA_GRACE_S": "60", "VIDEOQA_MAX_NEW_TOKENS": "4000"}
    server = start("serve", "--listen", address, "--model", "tiny-qwen2-vl", env=env)
    try:
        wait_serving(address, timeout=180)
        with grpc.insecure_channel(address) as channel:
            stub = videoqa_pb2_grpc.VideoQAStub(channel)
            created = events(stub.CreateSession(upload(spec(), video=video.read_bytes()), timeout=120))
            session_id = created["session"][0].session.session_id
            long = pb.GenerationParams(max_new_tokens=3000)
            stream = iter(
                stub.Ask(pb.AskRequest(session_id=session_id, question="go on", generation=long), timeout=120)
            )
            before = 0
            for response in stream:
                before += response.HasField("token")
                if before == 3:
                    break
            server.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            with grpc.insecure_channel(address) as fresh:
                health = health_pb2_grpc.HealthStub(fresh)
                deadline = time.monotonic() + 10
                while health.Check(health_pb2.HealthCheckRequest(), timeout=2).status != (
                    health_pb2.HealthCheckResponse.NOT_SERVING
                ):  # health still answers while draining: NOT_SERVING, so balancers stop sending
                    assert time.monotonic() < deadline, "health never left SERVING after SIGTERM"
                    time.sleep(0.02)
                with pytest.raises(grpc.RpcError) as refused:
                    videoqa_pb2_grpc.VideoQAStub(fresh).ListModels(pb.ListModelsRequest(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            rest = events(stream)  # the answer in flight goes on to its end
        assert rest["token"], "nothing was streamed after SIGTERM: the answer was cut, not drained"
        (stats,) = rest["stats"]
        assert stats.generated_tokens == before + len(rest["token"]) and stats.turn == 1
        output, _ = server.communicate(timeout=90)
        assert server.returncode == 0, output
        assert time.monotonic() - signalled < 60
        assert "draining" in output
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
