"""Sessions on a real local Redis Cluster over real gRPC: any worker continues a conversation, and
a master's death loses or duplicates nothing."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from tests.media import make_video
from tests.service.helpers import events, spec, upload
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc
from videoqa.worker.kvcache.store import RedisStore


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_video(None, frames=16, size=(96, 64), fps=8)


def connect(address: str):
    return videoqa_pb2_grpc.VideoQAStub(grpc.insecure_channel(address))


def ask(stub, session_id: str, question: str, key: str = "", tokens: int = 6) -> dict:
    request = pb.AskRequest(
        session_id=session_id,
        question=question,
        generation=pb.GenerationParams(max_new_tokens=tokens),
        idempotency_key=key,
    )
    return events(stub.Ask(request, timeout=60))


def ask_until_stored(stub, session_id: str, question: str, key: str, tokens: int = 6, within_s: float = 30.0) -> dict:
    """What the SDK does: retry UNAVAILABLE with the same idempotency key."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return ask(stub, session_id, question, key, tokens)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_created_on_one_worker_continued_on_another(start_pair, redis_cluster, video):
    a = connect(start_pair(redis_url=redis_cluster.url)[0])
    b = connect(start_pair(redis_url=redis_cluster.url)[0])
    created = events(a.CreateSession(upload(spec(), video=video), timeout=60))
    session_id = created["session"][0].session.session_id
    assert ask(a, session_id, "what is there?")["stats"][0].turn == 1
    on_b = ask(b, session_id, "and then?")
    assert on_b["stats"][0].turn == 2 and on_b["token"]
    assert ask(a, session_id, "anything else?")["stats"][0].turn == 3  # A's hot copy is stale: reloaded
    manifest = RedisStore(redis_cluster.url, ttl_s=60, max_session_bytes=1 << 30).manifest(session_id)
    assert manifest.version == 3


@pytest.mark.slow
def test_a_master_dies_mid_conversation_and_nothing_is_lost_or_duplicated(start_pair, tmp_path, video):
    from tests.redis_cluster import LocalRedisCluster

    with LocalRedisCluster(tmp_path) as cluster:
        settings = {"redis_url": cluster.url, "redis_replica_acks": 1, "redis_timeout_s": 1.0}
        a = connect(start_pair(**settings)[0])
        b = connect(start_pair(**settings)[0])
        created = events(a.CreateSession(upload(spec(), video=video), timeout=60))
        session_id = created["session"][0].session.session_id
        assert ask(a, session_id, "first?", key="t1")["stats"][0].turn == 1
        assert ask(b, session_id, "second?", key="t2")["stats"][0].turn == 2
        master = cluster.master_for_key(f"{RedisStore.base(session_id)}:manifest")

        in_flight: dict[str, object] = {}

        def third() -> None:
            try:
                in_flight["reply"] = ask(a, session_id, "third?", key="t3", tokens=40)
            except grpc.RpcError as error:
                in_flight["error"] = error

        thread = threading.Thread(target=third)
        thread.start()
        time.sleep(0.3)
        cluster.kill(master)
        thread.join(90)
        if "error" in in_flight:  # the turn in flight failed: UNAVAILABLE, never anything else
            assert in_flight["error"].code() == grpc.StatusCode.UNAVAILABLE, in_flight["error"]
        assert cluster.wait_for_failover(master) is not None
        # The client retries the third question with its key (on the other worker, say).
        retried = ask_until_stored(b, session_id, "third?", key="t3", tokens=40)
        assert retried["stats"][0].turn == 3
        if "reply" in in_flight:
            assert retried["stats"][0].replayed, "stored before the failover: the retry must not run it again"
            assert [t.token_id for t in retried["token"]] == [t.token_id for t in in_flight["reply"]["token"]]
        assert ask_until_stored(a, session_id, "fourth?", key="t4")["stats"][0].turn == 4
        manifest = RedisStore(cluster.url, ttl_s=60, max_session_bytes=1 << 30).manifest(session_id)
        assert manifest.version == 4
        assert [meta.key for meta in manifest.records[1:]] == ["t1", "t2", "t3", "t4"]
