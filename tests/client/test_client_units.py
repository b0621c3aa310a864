"""Conversions, error mapping, retry policy and media resolution, without a server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from videoqa.client import _common, _media, convert, errors
from videoqa.client.types import (
    Answer,
    FrameSampling,
    Generation,
    Limits,
    MethodInfo,
    MethodParam,
    ModelInfo,
    Progress,
    Pruning,
    SampledFrames,
    ServerInfo,
    SessionCreated,
    SessionInfo,
    Timings,
    Token,
    TurnStats,
)
from videoqa.v1 import videoqa_pb2 as pb

INFO = SessionInfo(
    session_id="s1",
    model="m",
    media_kind="images",
    sampling=FrameSampling(fps=0.5, max_frames=9, max_resolution=336),
    frames=SampledFrames([0, 4], [0.0, 2.0], 336, 188, 10, 2.0, 5.0),
    pruning=Pruning("snapkv", {"window": 8.0}, 0.5, max_visual_tokens=96),
    turns=2,
    context_length=10,
    cache_length=5,
    visual_tokens_before=100,
    visual_tokens_after=50,
    kv_bytes=1234,
    created_at=1.5,
    last_used_at=2.5,
    segments=3,
)
STATS = TurnStats("s1", 1, 2, 100, 50, 3, 1000, 500, 10, 5, 7, 8, "length", Timings(*range(10)), gpu_peak_bytes=5 << 30)


@pytest.mark.parametrize(
    "event",
    [
        Progress("prefill", 0.5, 0.0, "half"),
        Progress("save", 1.0, 0.25),
        SessionCreated(INFO),
        Token("é", 42, 3),
        STATS,
    ],
    ids=lambda e: type(e).__name__,
)
def test_events_round_trip(event: object) -> None:
    message = convert.event_to_pb(event)  # type: ignore[arg-type]
    assert convert.event_from_pb(pb.AskResponse.FromString(message.SerializeToString())) == event


def test_descriptions_round_trip() -> None:
    model = ModelInfo("m", "qwen2_vl", True, "r", "bfloat16", 99)
    assert convert.model_from_pb(convert.model_to_pb(model)) == model
    method = MethodInfo("m", "d", [MethodParam("p", "pd", 1.0, 0.0, 2.0, True)], True)
    assert convert.method_from_pb(convert.method_to_pb(method)) == method
    info = ServerInfo("1", "v1", Limits(*range(1, 11)), "m", "redis", {"torch": "2"}, 3)
    assert convert.server_info_from_pb(convert.server_info_to_pb(info)) == info
    limits = convert.server_info_to_pb(info).limits
    assert (limits.max_session_frames, limits.prefill_chunk_frames) == (9, 10)


def test_new_fields_reach_the_wire() -> None:
    """The fields added with AppendMedia travel in both directions under their proto names."""
    assert convert.session_info_to_pb(INFO).segments == 3
    assert convert.session_info_from_pb(pb.SessionInfo(segments=4)).segments == 4
    assert convert.pruning_to_pb(Pruning(max_visual_tokens=64)).max_visual_tokens == 64
    assert convert.pruning_from_pb(pb.PruningSpec(max_visual_tokens=7)).max_visual_tokens == 7
    assert convert.session_info_from_pb(convert.session_info_to_pb(INFO)).pruning.max_visual_tokens == 96
    assert convert.turn_stats_to_pb(STATS).gpu_peak_bytes == 5 << 30
    assert convert.turn_stats_from_pb(pb.TurnStats(gpu_peak_bytes=123)).gpu_peak_bytes == 123
    limits = convert.server_info_from_pb(pb.ServerInfo(limits=pb.Limits(max_session_frames=512))).limits
    assert limits.max_session_frames == 512 and limits.prefill_chunk_frames == 0
    with pytest.raises(ValueError):
        Pruning(max_visual_tokens=-1)


def test_options_to_pb() -> None:
    assert not convert.sampling_to_pb(FrameSampling()).HasField("num_frames")
    assert convert.sampling_from_pb(convert.sampling_to_pb(FrameSampling(num_frames=3))).num_frames == 3
    gen = Generation(max_new_tokens=4, temperature=0.5, top_p=0.75, seed=0)
    assert convert.generation_from_pb(convert.generation_to_pb(gen)) == gen
    assert not convert.generation_to_pb(Generation()).HasField("seed")
    assert convert.pruning_from_pb(convert.pruning_to_pb(Pruning(params={"a": 1}))).params == {"a": 1.0}


def test_unknown_enum_values_and_events() -> None:
    assert convert.stage_from_pb(0) == "unspecified"
    assert convert.stage_from_pb(77) == "unknown(77)"
    assert convert.finish_reason_from_pb(2) == "length"
    assert convert.event_from_pb(pb.AskResponse()) is None
    with pytest.raises(ValueError):
        convert.stage_to_pb("bogus")


def test_answer_from_events() -> None:
    answer = Answer.from_events([Progress("upload"), Token("a", 1, 0), Token("b", 2, 1), STATS])
    assert answer.text == "ab" and len(answer.tokens) == 2 and answer.stats == STATS


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        self._code, self._trailing = code, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "because"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


def test_error_mapping() -> None:
    e = errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION))
    assert type(e) is errors.FailedPrecondition and e.details == "because"
    assert str(e) == "FAILED_PRECONDITION: because" and not e.retryable
    assert errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE)).retryable
    assert type(errors.from_rpc_error(grpc.RpcError())) is errors.Unknown
    assert type(errors.error_for_code(grpc.StatusCode.OK)) is errors.Unknown


def test_retry_policy_backoff_and_limits() -> None:
    policy = _common.RetryPolicy(retries=5, backoff=0.1, max_backoff=0.3)
    deadline = _common.Deadline(60)
    unavailable = _FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    for attempt, ceiling in enumerate([0.1, 0.2, 0.3, 0.3, 0.3]):
        delay = policy.delay(attempt, unavailable, deadline)
        assert delay is not None and ceiling / 2 <= delay <= ceiling
    assert policy.delay(5, unavailable, deadline) is None
    assert policy.delay(0, _FakeRpcError(grpc.StatusCode.INTERNAL), deadline) is None
    pushback = _FakeRpcError(grpc.StatusCode.UNAVAILABLE, (("grpc-retry-pushback-ms", "1500"),))
    assert policy.delay(0, pushback, deadline) == 1.5
    assert policy.delay(0, pushback, _common.Deadline(1.0)) is None  # would outlive the deadline


def test_timeouts_and_options() -> None:
    assert _common.resolve_timeouts(None).create_session == 600
    assert _common.resolve_timeouts(9).ask == 9
    assert _common.resolve_timeouts(9).append_media == 9
    assert _common.resolve_timeouts(None).append_media == 600
    options = dict(_common.channel_options([("grpc.max_receive_message_length", 1)]))
    assert options["grpc.max_receive_message_length"] == 1
    assert options["grpc.max_send_message_length"] == 64 << 20
    assert _common.normalize_metadata({"X-Id": "1"}) == (("x-id", "1"),)


def test_media_resolution(tmp_path: Path) -> None:
    for name in ("b10.png", "b9.PNG", "a.jpg", ".hidden.png", "x.txt"):
        (tmp_path / name).write_bytes(name.encode())
    media = _media.Media.load(tmp_path)
    assert media.kind == "images" and [p.name for p in media.items] == ["a.jpg", "b9.PNG", "b10.png"]  # type: ignore[union-attr]
    assert media.total_bytes == sum(len(n) for n in ("a.jpg", "b9.PNG", "b10.png"))
    video = _media.Media.load(bytearray(b"abcdefg"))
    assert video.kind == "video" and list(video.chunks(3)) == [(0, b"abc"), (0, b"def"), (0, b"g")]
    empty = _media.Media.load([b""])
    spec = pb.SessionSpec()
    assert [r.WhichOneof("payload") for r in empty.requests(spec, 10)] == ["spec", "image"]
    append = _media.Media.load([b"ab", b"c"]).requests(pb.AppendSpec(session_id="s"), 1)
    messages = list(append)
    assert all(isinstance(m, pb.AppendMediaRequest) for m in messages)
    assert [m.WhichOneof("payload") for m in messages] == ["spec", "image", "image", "image"]
    assert [m.image.index for m in messages[1:]] == [0, 0, 1]
    assert all(isinstance(m, pb.CreateSessionRequest) for m in video.requests(pb.SessionSpec(), 4))
    with pytest.raises(TypeError):
        _media.Media.load(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        _media.Media.load([])


def test_append_spec_and_source() -> None:
    media = _media.Media.load([b"abc", b"de"])
    spec = _common.build_append_spec("s1", media, sampling=FrameSampling(num_frames=2), image_fps=3.0)
    assert spec.session_id == "s1" and spec.media_kind == pb.MEDIA_KIND_IMAGES and spec.total_bytes == 5
    assert spec.sampling.num_frames == 2 and spec.image_fps == 3.0
    assert not _common.build_append_spec("s1", media, sampling=None, image_fps=0).HasField("sampling")
    assert _common.append_source(b"v", None) == (b"v", False)
    assert _common.append_source(None, [b"i"]) == ([b"i"], True)
    for video, images in ((None, None), (b"v", [b"i"])):
        with pytest.raises(ValueError):
            _common.append_source(video, images)
