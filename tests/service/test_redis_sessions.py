"""Durable sessions over real gRPC and a real redis-server: any worker, restarts, damage, races."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from tests.media import make_video
from tests.service.helpers import events, spec, upload
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc

DAS = pb.PruningSpec(method="das", budget=0.3)
GREEDY = pb.GenerationParams(max_new_tokens=6)


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_video(None, frames=24, size=(96, 64), fps=8)


def stub_for(address: str, metadata=None):
    channel = grpc.insecure_channel(address)
    return videoqa_pb2_grpc.VideoQAStub(channel), channel


def ask(stub, session_id: str, question: str, **kw) -> dict:
    return events(
        stub.Ask(pb.AskRequest(session_id=session_id, question=question, generation=GREEDY), timeout=60, **kw)
    )


def tokens(reply: dict) -> list[int]:
    return [t.token_id for t in reply["token"]]


@pytest.mark.parametrize("model", ["tiny-qwen2-vl", "tiny-qwen3-vl", "tiny-qwen3.5"])
def test_session_continues_on_another_worker_like_a_live_one(start_pair, video, model):
    """Restored from Redis on another worker, a session answers as the live one: its cache, and a
    hybrid model's linear-attention states (Qwen3.5), exactly."""
    address_a, (address_b, worker_b) = start_pair(models=[model])[0], start_pair(models=[model])
    a, _ = stub_for(address_a)
    b, _ = stub_for(address_b)
    request = spec(model=model, question="what is in the video?", pruning=DAS, max_new_tokens=6)
    # Reference: one worker keeps the session live for every turn.
    live = events(a.CreateSession(upload(request, video=video), timeout=60))
    live_id = live["session"][0].session.session_id
    live_1, live_2 = ask(a, live_id, "and then?"), ask(a, live_id, "what is last?")
    # The same conversation, created on A and continued on B (restored from Redis there).
    moved = events(a.CreateSession(upload(request, video=video), timeout=60))
    moved_id = moved["session"][0].session.session_id
    assert tokens(moved) == tokens(live)
    restored_before = worker_b.engine.counters["lookup_store"]
    moved_1 = ask(b, moved_id, "and then?")
    assert worker_b.engine.counters["lookup_store"] == restored_before + 1, "B must restore it from Redis"
    moved_2 = ask(a, moved_id, "what is last?")  # back on A: its hot copy is stale, so it reloads
    assert tokens(moved_1) == tokens(live_1) and tokens(moved_2) == tokens(live_2)
    assert (
        moved_2["stats"][0].turn == 3
        and moved_2["stats"][0].visual_tokens_after < moved_2["stats"][0].visual_tokens_before
    )


def test_concurrent_followups_both_land_exactly_once(start_pair, video, redis_server):
    (address_a, _), (address_b, _) = start_pair(), start_pair()
    a, _ = stub_for(address_a)
    b, _ = stub_for(address_b)
    session = events(a.CreateSession(upload(spec(pruning=DAS), video=video), timeout=60))["session"][0].session
    results: dict[str, dict] = {}

    def run(name, stub, question):
        results[name] = ask(stub, session.session_id, question)

    threads = [
        threading.Thread(target=run, args=("a", a, "first question?")),
        threading.Thread(target=run, args=("b", b, "second question?")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(r["stats"][0].turn for r in results.values()) == [1, 2]
    from videoqa.worker.kvcache.store import RedisStore

    stored = RedisStore(redis_server.url, ttl_s=60, max_session_bytes=1 << 30).load(session.session_id)
    assert stored.manifest.version == 2 and len(stored.turns) == 2
    info = a.GetSession(pb.GetSessionRequest(session_id=session.session_id), timeout=10)
    assert info.turns == 2
    from videoqa.worker.kvcache.records import restore
    from videoqa.worker.model.loader import load_model

    lm = load_model("tiny-qwen2-vl")
    conversation = lm.tokenizer.decode(
        restore(
            stored.prefix, stored.turns, model_id=lm.model_id, revision=lm.revision, device=lm.device, dtype=lm.dtype
        ).state.token_ids
    )
    assert conversation.count("first question?") == 1 and conversation.count("second question?") == 1


def test_expiry_delete_and_size_cap(start_pair, video, redis_server):
    address, _ = start_pair(session_ttl_s=1.0)
    stub, _ = stub_for(address)
    session = events(stub.CreateSession(upload(spec(), video=video), timeout=60))["session"][0].session
    time.sleep(1.5)
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, session.session_id, "still there?")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    address, _ = start_pair()
    stub, _ = stub_for(address)
    session = events(stub.CreateSession(upload(spec(), video=video), timeout=60))["session"][0].session
    ask(stub, session.session_id, "one?")
    assert list(redis_server.client().scan_iter(match=f"*{session.session_id}*"))
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=session.session_id), timeout=10)
    assert list(redis_server.client().scan_iter(match=f"*{session.session_id}*")) == []
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, session.session_id, "gone?")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    address, _ = start_pair(max_session_bytes=2048)
    stub, _ = stub_for(address)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.CreateSession(upload(spec(), video=video), timeout=60))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_damaged_or_foreign_sessions_never_answer(start_pair, video, redis_server):
    address, _ = start_pair()
    stub, _ = stub_for(address)
    client = redis_server.client()
    damaged = events(stub.CreateSession(upload(spec(), video=video), timeout=60))["session"][0].session.session_id
    chunk = next(k for k in client.scan_iter(match=f"*{damaged}*:r:*"))
    value = bytearray(client.get(chunk))
    value[len(value) // 2] ^= 0xFF
    client.set(chunk, bytes(value), keepttl=True)
    other, _ = stub_for(start_pair()[0])  # a worker without a hot copy reads the damaged bytes
    with pytest.raises(grpc.RpcError) as err:
        ask(other, damaged, "what?")
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    with pytest.raises(grpc.RpcError) as err:  # discarded: it is gone for everyone
        ask(stub, damaged, "what?")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert list(client.scan_iter(match=f"*{damaged}*")) == []

    import json

    foreign = events(stub.CreateSession(upload(spec(), video=video), timeout=60))["session"][0].session.session_id
    key = next(k for k in client.scan_iter(match=f"*{foreign}*:manifest"))
    client.set(key, json.dumps({**json.loads(client.get(key)), "revision": "0123456789abcdef"}), keepttl=True)
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, foreign, "what?")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_sessions_belong_to_their_tenant(start_pair, video):
    def by_header(metadata) -> str:
        return dict(metadata).get("x-tenant", "anonymous")

    address, _ = start_pair(authenticate=by_header)
    stub, _ = stub_for(address)
    created = stub.CreateSession(upload(spec(), video=video), timeout=60, metadata=[("x-tenant", "alice")])
    session_id = events(created)["session"][0].session.session_id
    assert ask(stub, session_id, "mine?", metadata=[("x-tenant", "alice")])["stats"]
    for call in (
        lambda: ask(stub, session_id, "yours?", metadata=[("x-tenant", "bob")]),
        lambda: stub.DeleteSession(
            pb.DeleteSessionRequest(session_id=session_id), timeout=10, metadata=[("x-tenant", "bob")]
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ask(stub, session_id, "still mine?", metadata=[("x-tenant", "alice")])["stats"][0].turn == 2


def test_redis_killed_mid_conversation_then_back(start_pair, video, redis_server):
    # The failed turn's lock cannot be released while Redis is down; a short lease frees it soon after.
    address, worker = start_pair(lock_lease_s=2.0)
    stub, _ = stub_for(address)
    session = events(stub.CreateSession(upload(spec(), video=video), timeout=60))["session"][0].session.session_id
    assert ask(stub, session, "first?")["stats"][0].turn == 1
    long = pb.AskRequest(
        session_id=session, question="tell me everything", generation=pb.GenerationParams(max_new_tokens=400)
    )
    call = stub.Ask(long, timeout=60)
    seen = 0
    try:
        with pytest.raises(grpc.RpcError) as err:
            for response in call:
                seen += response.HasField("token")
                if seen == 2:
                    redis_server.kill()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as err:  # while Redis is down: retryable, with a hint
            ask(stub, session, "anyone?")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)  # what needs no session still works
        assert info.session_store == "redis"
        one_shot = events(stub.CreateSession(upload(spec(question="what is it?"), video=video), timeout=60))
        assert one_shot["stats"], "a question sent with the upload is answered even though nothing can be stored"
        assert any("not stored" in p.detail for p in one_shot["progress"])
    finally:
        redis_server.start()
    after = ask(stub, session, "and now?")
    assert after["stats"][0].turn == 2, "the session continues from its last saved turn"
    assert worker.engine.counters["store_unavailable"] >= 2
