"""The pruning spec from the API picks the method; turn stats report what pruning kept."""

from __future__ import annotations

import grpc
import pytest

from tests.conftest import FAMILIES
from tests.media import make_video
from tests.service.helpers import events, spec, upload
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.worker.pruning.registry import describe_methods


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_video(None, frames=32, size=(128, 96), fps=8)


def test_methods_are_listed_with_parameters(stub):
    methods = {m.name: m for m in stub.ListMethods(pb.ListMethodsRequest(), timeout=10).methods}
    expected = {
        "full",
        "random",
        "streaming_llm",
        "h2o",
        "snapkv",
        "pyramidkv",
        "fastv",
        "look_m",
        "csp",
        "madakv",
        "das",
        "hae",
        "retentive_kv",
    }
    assert expected <= set(methods)
    one_shot = {"h2o", "look_m", "hae", "retentive_kv"}
    assert {name for name in expected if not methods[name].progressive} == one_shot
    das = {p.name: p for p in methods["das"].params}
    assert das["alpha"].default == 0.5 and das["gamma"].min == 1 and das["bins_per_frame"].default == 0
    assert das["bins_per_frame"].integer
    assert {"bins_per_frame", "window"} <= {p.name for p in methods["snapkv"].params}
    hae = {p.name: p for p in methods["hae"].params}
    assert {"interval", "evict_below", "restore_above", "bin_capacity", "purge"} <= set(hae) and hae["purge"].integer
    assert "gate_scale" in {p.name for p in methods["retentive_kv"].params}
    assert "reconstruction" in methods["hae"].description and "reconstruction" in methods["retentive_kv"].description
    reductions = {m.name: m for m in stub.ListMethods(pb.ListMethodsRequest(), timeout=10).reductions}
    assert set(reductions) == {"evs", "vidcom2"} and not set(reductions) & set(methods)
    threshold = {p.name: p for p in reductions["evs"].params}["threshold"]
    assert (threshold.default, threshold.min, threshold.max, threshold.integer) == (0.0, 0.0, 1.0, False)


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "agnostic"])
@pytest.mark.parametrize("model", FAMILIES)
def test_das_budget_reaches_the_stats(stub, video, model, aware):
    request = spec(
        model=model,
        question="what moves?" if aware else "",
        pruning=pb.PruningSpec(method="das", budget=0.25, params={"gamma": 2.0, "bins_per_frame": 1}),
    )
    created = events(stub.CreateSession(upload(request, video=video), timeout=120))
    info = created["session"][0].session
    assert info.pruning.method == "das" and info.pruning.budget == 0.25
    assert info.pruning.params["gamma"] == 2.0 and info.pruning.params["alpha"] == 0.5  # defaults echoed
    if aware:
        stats = created["stats"][0]
    else:
        stats = events(stub.Ask(pb.AskRequest(session_id=info.session_id, question="what moves?"), timeout=60))[
            "stats"
        ][0]
    slots = round(0.25 * stats.visual_tokens_before)
    assert stats.visual_tokens_after == slots and stats.recycled_tokens > 0
    assert stats.kv_bytes_after < stats.kv_bytes_before
    assert stats.cache_length < stats.context_length
    prune = [p for p in created["progress"] if p.stage == pb.Progress.STAGE_PRUNE and p.fraction == 1.0]
    assert prune[0].seconds > 0 and "cache entries" in prune[0].detail
    follow = events(stub.Ask(pb.AskRequest(session_id=info.session_id, question="and then?"), timeout=60))["stats"][0]
    assert follow.visual_tokens_after == slots and follow.context_length > stats.context_length


def test_snapkv_with_recycling_bin_is_a_valid_configuration(stub, video):
    request = spec(question="what?", pruning=pb.PruningSpec(method="snapkv", budget=0.2, params={"bins_per_frame": 1}))
    stats = events(stub.CreateSession(upload(request, video=video), timeout=120))["stats"][0]
    assert stats.recycled_tokens > 0 and stats.visual_tokens_after == round(0.2 * stats.visual_tokens_before)


def test_bad_method_parameters_are_invalid_argument(stub, video):
    for pruning in [
        pb.PruningSpec(method="das", budget=0.2, params={"gamma": 0.5}),
        pb.PruningSpec(method="das", budget=0.2, params={"bins_per_frame": 0.5}),
        pb.PruningSpec(method="snapkv", budget=0.0001, params={"window": 0}),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.CreateSession(upload(spec(pruning=pruning), video=video), timeout=60))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


#: Every registered method (``full`` included).
ALL_METHODS = sorted(m.name for m in describe_methods())


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "agnostic"])
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("model", ["tiny-qwen3-vl", "tiny-qwen3.5"])
def test_every_method_serves_the_new_families(stub, video, model, method, aware):
    """Through the service, every method on Qwen3-VL and on the hybrid Qwen3.5, question-aware
    and agnostic: the session is built, pruned to its budget (the full-attention layers: what a
    hybrid model has of a KV cache), answers, and answers a follow-up on the same cache."""
    budget = 1.0 if method == "full" else 0.25
    request = spec(
        model=model, question="what moves?" if aware else "", pruning=pb.PruningSpec(method=method, budget=budget)
    )
    created = events(stub.CreateSession(upload(request, video=video), timeout=120))
    session = created["session"][0].session
    first = created["stats"][0] if aware else None
    if not aware:
        first = events(stub.Ask(pb.AskRequest(session_id=session.session_id, question="what moves?"), timeout=60))[
            "stats"
        ][0]
    if method == "full":
        assert first.visual_tokens_after == first.visual_tokens_before
    else:
        assert first.visual_tokens_after < first.visual_tokens_before and first.cache_length < first.context_length
    assert first.kv_bytes_after <= first.kv_bytes_before and first.generated_tokens > 0
    follow = events(stub.Ask(pb.AskRequest(session_id=session.session_id, question="and then?"), timeout=60))
    assert follow["stats"][0].context_length > first.context_length and follow["stats"][0].generated_tokens > 0
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=session.session_id), timeout=10)
