"""``hae`` and ``retentive_kv`` through the service: every family, both pruning modes, a follow-up on
another worker after a reload from Redis answers exactly as the live session does."""

from __future__ import annotations

import pytest

from tests.conftest import FAMILIES, wait_serving
from tests.media import make_video
from tests.service.helpers import events, spec, upload
from tests.service.test_redis_sessions import ask, stub_for, tokens
from videoqa.service.routing import WORKER_SERVICE
from videoqa.v1 import videoqa_pb2 as pb

#: hae with a decode-time bin that moves entries within a few tokens on the tiny random models.
BUSY_HAE = pb.PruningSpec(
    method="hae", budget=0.4, params={"interval": 2, "evict_below": 0.95, "restore_above": 1.05, "decay": 0.5}
)
RETENTIVE = pb.PruningSpec(method="retentive_kv", budget=0.3)
ANSWER_TOKENS = 10


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_video(None, frames=24, size=(96, 64), fps=8)


@pytest.fixture(scope="module")
def pair(loop_thread, redis_server):
    """Two workers on one Redis, each with its own frontend, serving every family: (A, B, worker B)."""
    from videoqa.service.app import FrontendSettings, start_frontend, start_worker
    from videoqa.worker.settings import WorkerSettings

    started, addresses = [], []
    for _ in range(2):
        worker = loop_thread.run(
            start_worker(WorkerSettings(models=FAMILIES, redis_url=redis_server.url), "127.0.0.1:0")
        )
        wait_serving(f"127.0.0.1:{worker.port}", WORKER_SERVICE)
        frontend = loop_thread.run(
            start_frontend(FrontendSettings(listen="127.0.0.1:0", probe_interval_s=0.1), [f"127.0.0.1:{worker.port}"])
        )
        addresses.append(f"127.0.0.1:{frontend.port}")
        wait_serving(addresses[-1])
        started.extend([frontend, worker])
    yield addresses[0], addresses[1], started[3]
    for running in started:
        loop_thread.run(running.stop(0))


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "agnostic"])
@pytest.mark.parametrize("pruning", [BUSY_HAE, RETENTIVE], ids=["hae", "retentive_kv"])
@pytest.mark.parametrize("model", FAMILIES)
def test_a_followup_after_a_reload_from_redis_answers_as_live(pair, video, model, pruning, aware):
    address_a, address_b, worker_b = pair
    a, _ = stub_for(address_a)
    b, _ = stub_for(address_b)
    request = spec(
        model=model, question="what is in the video?" if aware else "", pruning=pruning, max_new_tokens=ANSWER_TOKENS
    )
    questions = ["what is in the video?", "and then?", "what is last?"][0 if not aware else 1 :]
    # Reference: one worker keeps the session live for every turn.
    live = events(a.CreateSession(upload(request, video=video), timeout=60))
    live_id = live["session"][0].session.session_id
    live_turns = [ask(a, live_id, q) for q in questions]
    # The same conversation: created on A, every follow-up on B (restored from Redis there).
    moved = events(a.CreateSession(upload(request, video=video), timeout=60))
    moved_id = moved["session"][0].session.session_id
    assert tokens(moved) == tokens(live)
    loaded = worker_b.engine.counters["lookup_store"]
    # B, then A (its hot copy is now stale, so it reloads), then B again: a reload every turn.
    moved_turns = [ask(stub, moved_id, q) for stub, q in zip([b, a, b], questions, strict=False)]
    assert worker_b.engine.counters["lookup_store"] >= loaded + 1, "B must restore it from Redis"
    for mine, theirs in zip(moved_turns, live_turns, strict=True):
        assert tokens(mine) == tokens(theirs)
        m, t = mine["stats"][0], theirs["stats"][0]
        assert (m.turn, m.visual_tokens_after, m.recycled_tokens, m.cache_length, m.kv_bytes_after) == (
            t.turn,
            t.visual_tokens_after,
            t.recycled_tokens,
            t.cache_length,
            t.kv_bytes_after,
        )
        assert m.visual_tokens_after < m.visual_tokens_before
    if pruning.method == "hae":  # entries sit in the decode bin, reported as recycled, and vary
        counts = [r["stats"][0].recycled_tokens for r in [live, *live_turns] if r["stats"]]
        assert max(counts) > 0, counts


REDUCED = pb.PruningSpec(method="das", budget=0.4, reduction=pb.ReductionSpec(method="evs", retention=0.5))


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "agnostic"])
@pytest.mark.parametrize("model", FAMILIES)
def test_a_reduced_and_pruned_session_reloads_on_another_worker_and_answers_as_live(pair, video, model, aware):
    """Reduction before the LLM composed with ``das``: the stored session (kept tokens at their
    original positions) continues on another worker exactly as the live one, and every stage's
    token count is reported."""
    address_a, address_b, worker_b = pair
    a, _ = stub_for(address_a)
    b, _ = stub_for(address_b)
    request = spec(
        model=model, question="what is in the video?" if aware else "", pruning=REDUCED, max_new_tokens=ANSWER_TOKENS
    )
    questions = ["and then?", "what is last?"] if aware else ["what is in the video?", "and then?"]
    live = events(a.CreateSession(upload(request, video=video), timeout=60))
    info = live["session"][0].session
    assert info.pruning.reduction.method == "evs" and info.pruning.reduction.retention == 0.5
    assert info.visual_tokens_encoded > info.visual_tokens_before > info.visual_tokens_after
    prefilled = [p for p in live["progress"] if p.stage == pb.Progress.STAGE_PREFILL and p.fraction == 1.0]
    expected = f"{info.visual_tokens_before} of {info.visual_tokens_encoded} visual tokens into the language model"
    assert expected in prefilled[0].detail and prefilled[0].seconds > 0
    live_turns = [ask(a, info.session_id, q) for q in questions]
    moved = events(a.CreateSession(upload(request, video=video), timeout=60))
    moved_id = moved["session"][0].session.session_id
    assert tokens(moved) == tokens(live)
    loaded = worker_b.engine.counters["lookup_store"]
    moved_turns = [ask(stub, moved_id, q) for stub, q in zip([b, a], questions, strict=True)]
    assert worker_b.engine.counters["lookup_store"] >= loaded + 1, "B must restore it from Redis"
    for mine, theirs in zip(moved_turns, live_turns, strict=True):
        assert tokens(mine) == tokens(theirs)
        m, t = mine["stats"][0], theirs["stats"][0]
        assert (m.visual_tokens_encoded, m.visual_tokens_before, m.visual_tokens_after, m.cache_length) == (
            t.visual_tokens_encoded,
            t.visual_tokens_before,
            t.visual_tokens_after,
            t.cache_length,
        )
        assert m.visual_tokens_encoded == info.visual_tokens_encoded
        assert m.visual_tokens_before == info.visual_tokens_before  # what the language model saw
