"""End to end over real gRPC on loopback: upload, ask, follow up, get, delete; health; reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import FAMILIES
from tests.media import make_images, make_video
from tests.service.helpers import events, spec, upload
from videoqa.v1 import videoqa_pb2 as pb


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_video(None, frames=48, size=(128, 96), fps=24)


@pytest.mark.parametrize("model", FAMILIES)
def test_video_session_ask_followup_delete(stub, video, model):
    created = events(stub.CreateSession(upload(spec(model=model), video=video), timeout=120))
    stages = [p.stage for p in created["progress"] if p.fraction == 1.0]
    assert stages == [
        pb.Progress.STAGE_DECODE,
        pb.Progress.STAGE_ENCODE,
        pb.Progress.STAGE_PREFILL,
        pb.Progress.STAGE_PRUNE,
        pb.Progress.STAGE_SAVE,
    ]
    assert not created["token"] and not created["stats"]
    info = created["session"][0].session
    assert info.model == model and info.turns == 0
    assert len(info.frames.indices) == 8 and info.frames.source_frames == 48
    assert list(info.frames.timestamps) == sorted(info.frames.timestamps)
    assert info.visual_tokens_before > 0 and info.cache_length == info.context_length

    six = pb.GenerationParams(max_new_tokens=6)
    first = events(
        stub.Ask(
            pb.AskRequest(session_id=info.session_id, question="what is in the video?", generation=six), timeout=60
        )
    )
    assert 1 <= len(first["token"]) <= 6
    stats = first["stats"][0]
    assert stats.turn == 1 and stats.frames_used == 8 and stats.generated_tokens == len(first["token"])
    assert stats.kv_bytes_before == stats.kv_bytes_after > 0
    assert stats.visual_tokens_before == stats.visual_tokens_after == info.visual_tokens_before
    assert stats.timings.time_to_first_token_seconds > 0

    second = events(stub.Ask(pb.AskRequest(session_id=info.session_id, question="and then?"), timeout=60))
    assert second["stats"][0].turn == 2
    assert second["stats"][0].context_length > stats.context_length

    got = stub.GetSession(pb.GetSessionRequest(session_id=info.session_id), timeout=10)
    assert got.turns == 2 and got.context_length == second["stats"][0].context_length

    stub.DeleteSession(pb.DeleteSessionRequest(session_id=info.session_id), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSession(pb.GetSessionRequest(session_id=info.session_id), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("model", FAMILIES)
def test_image_sequence_with_first_question(stub, model):
    images = make_images(6, size=(96, 64))
    request = spec(model=model, frames=4, question="which image is red?", max_new_tokens=5)
    reply = events(stub.CreateSession(upload(request, images=images, chunk=500), timeout=120))
    info = reply["session"][0].session
    assert info.media_kind == pb.MEDIA_KIND_IMAGES
    assert info.frames.source_frames == 6 and len(info.frames.indices) == 4
    assert 1 <= len(reply["token"]) <= 5
    assert reply["stats"][0].turn == 1 and reply["stats"][0].session_id == info.session_id
    follow = events(stub.Ask(pb.AskRequest(session_id=info.session_id, question="and the last?"), timeout=60))
    assert follow["stats"][0].turn == 2


def test_first_question_in_upload_equals_separate_ask_greedy(stub, video):
    """A question-aware upload and an agnostic upload + ask give the same greedy answer."""
    question = "what happens in the video?"
    aware = events(stub.CreateSession(upload(spec(question=question, max_new_tokens=8), video=video), timeout=120))
    agnostic = events(stub.CreateSession(upload(spec(), video=video), timeout=120))
    session_id = agnostic["session"][0].session.session_id
    asked = events(
        stub.Ask(
            pb.AskRequest(session_id=session_id, question=question, generation=pb.GenerationParams(max_new_tokens=8)),
            timeout=60,
        )
    )
    assert [t.token_id for t in aware["token"]] == [t.token_id for t in asked["token"]]
    assert "".join(t.text for t in aware["token"]) == "".join(t.text for t in asked["token"])


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "videoqa.v1.VideoQA"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"videoqa.v1.VideoQA", "grpc.health.v1.Health"} <= names


def test_describe_endpoints(stub):
    models = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert [m.id for m in models] == FAMILIES and models[0].is_default
    assert {m.family for m in models} == {"qwen2_vl", "qwen2_5_vl", "llava_onevision", "qwen3_vl", "qwen3_5"}
    assert all(m.kv_bytes_per_token > 0 and m.revision for m in models)
    layers = {m.family: (m.attention_layers, m.linear_attention_layers, m.linear_state_bytes > 0) for m in models}
    assert layers["qwen3_vl"] == (2, 0, False) and layers["qwen3_5"] == (2, 2, True), "pruned: the KV layers"
    methods = stub.ListMethods(pb.ListMethodsRequest(), timeout=10).methods
    assert "full" in {m.name for m in methods}
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert info.api_version == "v1" and info.default_model == FAMILIES[0]
    assert info.limits.max_frames == 16 and info.limits.max_upload_bytes == 4 << 20
    assert info.session_store == "memory" and "torch" in info.runtime_versions
