"""Frontend and workers apart: rendezvous affinity, failover when a worker is down."""

from __future__ import annotations

import grpc
import pytest

from tests.conftest import wait_serving
from tests.media import make_video
from tests.service.helpers import events, spec, upload
from videoqa.service.routing import rendezvous_order
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc


def test_rendezvous_order_is_stable_and_minimal_on_change():
    workers = [f"w{i}:1" for i in range(4)]
    keys = [f"session-{i}" for i in range(400)]
    first = {k: rendezvous_order(k, workers)[0] for k in keys}
    assert first == {k: rendezvous_order(k, list(reversed(workers)))[0] for k in keys}
    assert len(set(first.values())) == 4, "every worker gets some sessions"
    survivors = workers[1:]
    moved = [k for k in keys if rendezvous_order(k, survivors)[0] != first[k]]
    assert all(first[k] == "w0:1" for k in moved), "only the removed worker's sessions move"


@pytest.fixture()
def cluster(loop_thread, tiny_model):
    """A frontend routing to two separate workers (each its own gRPC server and engine)."""
    from videoqa.service.app import FrontendSettings, start_frontend, start_worker
    from videoqa.worker.settings import WorkerSettings

    settings = WorkerSettings(models=["tiny-qwen2-vl"], default_max_new_tokens=4)
    workers = [loop_thread.run(start_worker(settings, "127.0.0.1:0")) for _ in range(2)]
    addresses = [f"127.0.0.1:{w.port}" for w in workers]
    for address in addresses:
        wait_serving(address, "videoqa.internal.v1.Worker")
    frontend = loop_thread.run(start_frontend(FrontendSettings(listen="127.0.0.1:0", probe_interval_s=0.1), addresses))
    address = f"127.0.0.1:{frontend.port}"
    wait_serving(address)
    yield address, workers, addresses
    loop_thread.run(frontend.stop(0))
    for worker in workers:
        loop_thread.run(worker.stop(0))


def test_affinity_and_failover(loop_thread, cluster):
    address, workers, addresses = cluster
    video = make_video(None, frames=16, size=(64, 64), fps=8)
    with grpc.insecure_channel(address) as channel:
        stub = videoqa_pb2_grpc.VideoQAStub(channel)
        sessions: list[str] = []
        owner: dict[str, str] = {}
        while len(sessions) < 6 or len(set(owner.values())) < 2:  # ids are random: until both hold some
            assert len(sessions) < 40, "sessions should land on both workers"
            reply = events(stub.CreateSession(upload(spec(frames=4), video=video), timeout=60))
            sessions.append(reply["session"][0].session.session_id)
            owner[sessions[-1]] = rendezvous_order(sessions[-1], addresses)[0]
        for worker, addr in zip(workers, addresses, strict=True):
            held = {s for s in sessions if owner[s] == addr}
            assert {s for s in held if _holds(worker, s)} == held, "each session lives on its rendezvous worker"
        for session in sessions:  # follow-ups find their session: routed to the same worker
            assert events(stub.Ask(pb.AskRequest(session_id=session, question="what?"), timeout=30))["stats"]

        # Take one worker down: new sessions and the other worker's sessions keep working.
        down = 0
        loop_thread.run(workers[down].stop(0))
        for _ in range(4):
            reply = events(stub.CreateSession(upload(spec(frames=4), video=video), timeout=60))
            assert reply["session"]
        for session in sessions:
            if owner[session] == addresses[down]:
                with pytest.raises(grpc.RpcError) as err:  # held in the dead worker's memory
                    list(stub.Ask(pb.AskRequest(session_id=session, question="what?"), timeout=30))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
            else:
                assert events(stub.Ask(pb.AskRequest(session_id=session, question="what?"), timeout=30))["stats"]


def _holds(running, session_id: str) -> bool:
    return session_id in running.engine.sessions._hot


def test_workers_found_through_dns(loop_thread, cluster):
    """``dns:NAME:PORT`` finds the workers NAME resolves to; a failed lookup keeps the last set;
    host:port addresses are never dropped; a frontend with no worker yet still starts."""
    from videoqa.service.app import FrontendSettings, start_frontend
    from videoqa.service.routing import WorkerPool

    _, workers, addresses = cluster
    port = workers[0].port

    async def probe(pool: WorkerPool) -> dict[str, bool]:
        await pool.probe_once()
        return {address: handle.healthy for address, handle in pool.workers.items()}

    async def make() -> WorkerPool:  # its channels belong to the servers' loop
        return WorkerPool([f"dns:localhost:{port}", addresses[1]])

    pool = loop_thread.run(make())
    found = loop_thread.run(probe(pool))
    assert found[f"127.0.0.1:{port}"] and found[addresses[1]]
    pool.names = ["no-such-host.invalid:1"]  # resolution fails: keep what we had
    assert loop_thread.run(probe(pool)) == found
    loop_thread.run(pool.close())
    with pytest.raises(ValueError, match="dns:NAME:PORT"):
        WorkerPool(["dns:localhost"])

    empty = loop_thread.run(
        start_frontend(FrontendSettings(listen="127.0.0.1:0", probe_interval_s=0.1), ["dns:no-such-host.invalid:1"])
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{empty.port}") as channel:
            stub = videoqa_pb2_grpc.VideoQAStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                stub.ListModels(pb.ListModelsRequest(), timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        loop_thread.run(empty.stop(0))
