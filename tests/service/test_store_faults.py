"""Sessions under store faults, over real gRPC and a real redis-server (through a fault proxy where
the network misbehaves): each test is one defect a user or operator met (issue 16, 1-6 and 8)."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.faultproxy import FaultProxy
from tests.media import make_video
from tests.service.helpers import events, spec, upload
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc
from videoqa.worker.kvcache.store import RedisStore

GREEDY = pb.GenerationParams(max_new_tokens=6)
#: Only the request that appends a turn's record to the manifest carries this.
APPEND_SCRIPT = b"chunks_intact(2, 5)"


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_video(None, frames=16, size=(96, 64), fps=8)


@pytest.fixture()
def proxy(redis_server):
    proxy = FaultProxy(redis_server.port)
    yield proxy
    proxy.close()


def connect(address: str):
    channel = grpc.insecure_channel(address)
    return videoqa_pb2_grpc.VideoQAStub(channel), channel


def create(stub, video: bytes, **kw) -> str:
    reply = events(stub.CreateSession(upload(spec(**kw), video=video), timeout=60))
    return reply["session"][0].session.session_id


def ask(stub, session_id: str, question: str, key: str = "", **kw) -> dict:
    request = pb.AskRequest(session_id=session_id, question=question, generation=GREEDY, idempotency_key=key)
    return events(stub.Ask(request, timeout=kw.pop("timeout", 60), **kw))


def reason(error: grpc.RpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""


def stored(redis_server, session_id: str):
    return RedisStore(redis_server.url, ttl_s=60, max_session_bytes=1 << 30).manifest(session_id)


def tokens(reply: dict) -> list[int]:
    return [t.token_id for t in reply["token"]]


def test_a_lost_reply_to_a_stored_turn_is_success_and_a_retry_replays_it(start_pair, proxy, redis_server, video):
    """1: the manifest write's reply is lost (held past the socket timeout): the worker reads the
    manifest back, so the call succeeds; the SDK-style retry with the same key replays the turn."""
    from videoqa.client import Generation, VideoQAClient

    address, _ = start_pair(redis_url=proxy.url, redis_timeout_s=0.5)
    stub, _ = connect(address)
    reference = ask(stub, create(stub, video), "what is there?")  # the same question without faults
    session_id = create(stub, video)
    with VideoQAClient(address) as client:
        proxy.hold_reply(APPEND_SCRIPT, 2.0)
        answer = client.ask_text(session_id, "what is there?", Generation(max_new_tokens=6))
    assert proxy.held == 1, "the fault was not injected"
    manifest = stored(redis_server, session_id)
    assert manifest.version == 1, "the lost reply must not make a second turn"
    assert answer.text == "".join(t.text for t in reference["token"])
    # A raw client retrying with its key gets the stored turn, not a second one.
    first = ask(stub, session_id, "and then?", key="retry-1")
    again = ask(stub, session_id, "and then?", key="retry-1")
    assert again["stats"][0].replayed and not first["stats"][0].replayed
    assert tokens(again) == tokens(first) and [t.text for t in again["token"]] == [t.text for t in first["token"]]
    assert again["stats"][0].turn == first["stats"][0].turn == 2
    assert stored(redis_server, session_id).version == 2
    with pytest.raises(grpc.RpcError) as err:  # the key of another request is refused, not answered
        ask(stub, session_id, "a different question?", key="retry-1")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_unknown_outcome_is_unavailable_and_the_retry_stores_exactly_one_turn(
    start_pair, proxy, redis_server, video
):
    """1: the store goes dark after the manifest write: the worker cannot tell whether the turn
    was stored, says so (UNAVAILABLE), and rolls back; the retry with the same key finds it stored."""
    address, _ = start_pair(redis_url=proxy.url, redis_timeout_s=0.3)
    stub, _ = connect(address)
    session_id = create(stub, video)
    proxy.blackhole(after=APPEND_SCRIPT)
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, session_id, "what is there?", key="k-unknown")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and reason(err.value) == "STORE_UNAVAILABLE"
    assert "may or may not" in err.value.details()
    proxy.heal()
    retried = ask(stub, session_id, "what is there?", key="k-unknown")
    manifest = stored(redis_server, session_id)
    assert manifest.version == 1 and retried["stats"][0].turn == 1
    assert retried["stats"][0].replayed, "the turn was stored by the first call: the retry must not run it again"
    follow = ask(stub, session_id, "and then?")  # the live session continues from the stored turn
    assert follow["stats"][0].turn == 2 and stored(redis_server, session_id).version == 2


def test_a_full_store_is_resource_exhausted_and_rolls_the_turn_back(start_pair, redis_server, video):
    """2: Redis at maxmemory with noeviction: RESOURCE_EXHAUSTED / STORE_FULL, never INTERNAL."""
    address, _ = start_pair()
    stub, _ = connect(address)
    session_id = create(stub, video)
    client = redis_server.client()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used // 2))  # over its limit: Redis refuses every write
    try:
        for attempt in (lambda: create(stub, video), lambda: ask(stub, session_id, "what is there?")):
            with pytest.raises(grpc.RpcError) as err:
                attempt()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
            assert reason(err.value) == "STORE_FULL" and "maxmemory" in err.value.details()
    finally:
        client.config_set("maxmemory", "0")
    after = ask(stub, session_id, "what is there?")
    assert after["stats"][0].turn == 1 and stored(redis_server, session_id).version == 1


def test_turns_waiting_on_one_session_run_in_arrival_order(start_pair, video):
    """3: five questions queued on one session become turns in the order they arrived."""
    address, _ = start_pair()
    stub, _ = connect(address)
    session_id = create(stub, video)
    turns: dict[int, int] = {}

    def run(arrival: int) -> None:
        generation = pb.GenerationParams(max_new_tokens=24 if arrival == 0 else 2)
        request = pb.AskRequest(session_id=session_id, question=f"question {arrival}?", generation=generation)
        turns[arrival] = events(stub.Ask(request, timeout=120))["stats"][0].turn

    threads = []
    for arrival in range(5):
        threads.append(threading.Thread(target=run, args=(arrival,)))
        threads[-1].start()
        time.sleep(0.15)  # each arrives while the ones before it wait or run
    for thread in threads:
        thread.join(120)
    assert [turns[a] for a in range(5)] == [1, 2, 3, 4, 5]


def test_a_manifest_that_disagrees_with_its_records_is_data_loss(start_pair, redis_server, video):
    """4: a turn count that its records do not match is DATA_LOSS at once, not UNAVAILABLE forever."""
    address, _ = start_pair()
    stub, _ = connect(address)
    session_id = create(stub, video)
    client = redis_server.client()
    key = f"{RedisStore.base(session_id)}:manifest"
    client.set(key, json.dumps({**json.loads(client.get(key)), "version": 3}), keepttl=True)
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, session_id, "what is there?")
    assert err.value.code() == grpc.StatusCode.DATA_LOSS


def test_the_owner_deletes_a_session_of_any_format_or_layout(start_pair, redis_server, video):
    """5: another format version, or the previous key layout: the owner deletes it; nobody else."""
    address, _ = start_pair()
    stub, _ = connect(address)
    client = redis_server.client()
    session_id = create(stub, video)
    key = f"{RedisStore.base(session_id)}:manifest"
    client.set(key, json.dumps({**json.loads(client.get(key)), "format_version": 99}), keepttl=True)
    with pytest.raises(grpc.RpcError) as err:
        ask(stub, session_id, "what?")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id), timeout=10)
    assert list(client.scan_iter(match=f"*{session_id}*")) == []
    # A session stored by key layout v1 (before hash tags): refused clearly, and deleted.
    legacy = "0123456789abcdef0123456789abcdef"
    base = RedisStore.legacy_base(legacy)
    client.set(f"{base}:manifest", json.dumps({"tenant": "default", "format_version": 1, "version": 0}), ex=60)
    client.set(f"{base}:r:ffff:0", b"x", ex=60)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSession(pb.GetSessionRequest(session_id=legacy), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "layout v1" in err.value.details()
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=legacy), timeout=10)
    assert list(client.scan_iter(match=f"*{legacy}*")) == []


def test_a_store_outage_is_unavailable_about_the_store_and_the_worker_stays_up(start_pair, proxy, video):
    """6: the client learns that the store is unreachable (not "no worker"), the frontend keeps
    its worker, and the conversation continues once the store is back."""
    address, _ = start_pair(redis_url=proxy.url, redis_timeout_s=0.3)
    stub, channel = connect(address)
    session_id = create(stub, video)
    proxy.blackhole()
    try:
        with pytest.raises(grpc.RpcError) as err:
            ask(stub, session_id, "what is there?")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "session store" in err.value.details() and reason(err.value) == "STORE_UNAVAILABLE"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proxy.heal()
    assert ask(stub, session_id, "what is there?")["stats"][0].turn == 1


def test_damage_is_found_before_a_turn_builds_on_a_hot_session(start_pair, redis_server, video):
    """8: a record deleted or truncated in Redis while the session is hot in the worker: the next
    turn is DATA_LOSS before it is stored on top, not a new turn saved over damaged data."""
    address, _ = start_pair()
    stub, _ = connect(address)
    client = redis_server.client()
    for damage in ("delete", "truncate"):
        session_id = create(stub, video)
        assert ask(stub, session_id, "what is there?")["stats"][0].turn == 1  # hot in the worker now
        chunk = sorted(client.scan_iter(match=f"*{session_id}*:r:*"))[0]
        if damage == "delete":
            client.delete(chunk)
        else:
            client.set(chunk, client.get(chunk)[:-7], keepttl=True)
        with pytest.raises(grpc.RpcError) as err:
            ask(stub, session_id, "and then?")
        assert err.value.code() == grpc.StatusCode.DATA_LOSS, damage
        assert not [k for k in client.scan_iter(match=f"*{session_id}*") if k.endswith(b":manifest")]
