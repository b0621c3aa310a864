"""Sessions that grow: media appended over real gRPC, stored in a real Redis, across a restart."""

from __future__ import annotations

import grpc
import pytest

from tests.media import make_video
from tests.pruning.conversation import Conversation, one_prompt
from tests.service.helpers import events, spec, upload
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc
from videoqa.worker.errors import TurnCancelled
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.types import GenerationParams, MediaKind, PruningSpec, SamplingSpec

FRAMES = 4
ANSWER = 4


def append_upload(session_id: str, video: bytes, frames: int = FRAMES, chunk: int = 65536):
    yield pb.AppendMediaRequest(
        spec=pb.AppendSpec(
            session_id=session_id, media_kind=pb.MEDIA_KIND_VIDEO, sampling=pb.FrameSampling(num_frames=frames)
        )
    )
    for start in range(0, len(video), chunk):
        yield pb.AppendMediaRequest(video_chunk=video[start : start + chunk])


def stub_at(address: str):
    channel = grpc.insecure_channel(address)
    return videoqa_pb2_grpc.VideoQAStub(channel)


def ask(stub, session_id: str, question: str) -> list[int]:
    request = pb.AskRequest(
        session_id=session_id, question=question, generation=pb.GenerationParams(max_new_tokens=ANSWER)
    )
    return [t.token_id for t in events(stub.Ask(request, timeout=60))["token"]]


@pytest.fixture(scope="module")
def segments() -> list[bytes]:
    """Eight different clips, the parts of one stream."""
    return [make_video(None, frames=16 + 2 * i, size=(96, 64), fps=8) for i in range(8)]


def decoded(video: bytes):
    """The frames the worker samples from ``video`` (its decoder, its resolved sampling)."""
    from videoqa.worker.video.decode import MediaDecoder

    with MediaDecoder() as decoder:
        sampling = SamplingSpec(num_frames=FRAMES, max_frames=64, max_resolution=448, default_frames=8)
        return decoder.decode(MediaKind.VIDEO, video, sampling, 1.0, 60.0)


@pytest.mark.slow
def test_a_stream_appended_in_segments_answers_as_one_prompt(start_pair, segments, tiny_model, loop_thread):
    """A session created from the first clip gets seven more appended, with questions between
    them, and the worker is replaced halfway (the next one restores the session from Redis). At
    keep-all every answer equals the answer of one prompt holding the whole conversation."""
    address, worker = start_pair(prefill_chunk_frames=2)  # a 4-frame clip runs as two chunks
    stub = stub_at(address)
    created = events(stub.CreateSession(upload(spec(frames=FRAMES), video=segments[0]), timeout=120))
    session_id = created["session"][0].session.session_id
    served: list[list[int]] = []
    questions = {1: "what is new?", 3: "where is the square?", 5: "and now?", 7: "what happened overall?"}
    for index in range(1, 8):
        if index == 4:  # a restart: this worker goes away, a new one takes the session from Redis
            loop_thread.run(worker.stop(0))
            address, worker = start_pair(prefill_chunk_frames=2)
            stub = stub_at(address)
        appended = events(stub.AppendMedia(append_upload(session_id, segments[index]), timeout=120))
        info = appended["session"][0].session
        assert info.segments == index + 1 and len(info.frames.timestamps) == FRAMES * (index + 1)
        assert any(0 < p.fraction < 1 for p in appended["progress"] if p.stage == pb.Progress.STAGE_PREFILL)
        if index in questions:
            served.append(ask(stub, session_id, questions[index]))
    info = stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=30)
    timestamps = list(info.frames.timestamps)
    assert info.segments == 8 and timestamps == sorted(timestamps) and len(set(timestamps)) == len(timestamps)
    assert info.turns == len(questions)

    lm = tiny_model("tiny-qwen2-vl")
    clips = [decoded(video) for video in segments]
    talk = Conversation(lm, PruningSpec("full"), None, clip=clips[0])
    expected, alike = [], []
    for index in range(1, 8):
        talk.append(clip=clips[index])
        if index in questions:
            talk.ask(questions[index])
            before = list(talk.state.token_ids)
            tokens, _ = talk.answer(GenerationParams(max_new_tokens=ANSWER))
            expected.append(tokens)
            ref_state, ref_logits = one_prompt(lm, talk.clips, before)
            alike.append(list(ModelRunner(lm).stream(ref_state, ref_logits, GenerationParams(max_new_tokens=ANSWER))))
    assert served == expected == alike


def test_appending_needs_a_progressive_method_and_room(start_pair, segments):
    address, _ = start_pair(max_session_frames=3 * FRAMES)
    stub = stub_at(address)
    hae = pb.PruningSpec(method="hae", budget=0.5)
    one_shot = events(stub.CreateSession(upload(spec(frames=FRAMES, pruning=hae), video=segments[0]), timeout=60))
    with pytest.raises(grpc.RpcError) as err:
        events(stub.AppendMedia(append_upload(one_shot["session"][0].session.session_id, segments[1]), timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "progressive" in err.value.details()

    created = events(stub.CreateSession(upload(spec(frames=FRAMES), video=segments[0]), timeout=60))
    session_id = created["session"][0].session.session_id
    events(stub.AppendMedia(append_upload(session_id, segments[1]), timeout=60))
    events(stub.AppendMedia(append_upload(session_id, segments[2]), timeout=60))
    with pytest.raises(grpc.RpcError) as err:  # a fourth clip would exceed the session's frames
        events(stub.AppendMedia(append_upload(session_id, segments[3]), timeout=60))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=30).segments == 3
    with pytest.raises(grpc.RpcError) as err:
        events(stub.AppendMedia(append_upload("0" * 32, segments[1]), timeout=60))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    capped = pb.PruningSpec(method="h2o", budget=0.5, max_visual_tokens=10)
    with pytest.raises(grpc.RpcError) as err:
        events(stub.CreateSession(upload(spec(frames=FRAMES, pruning=capped), video=segments[0]), timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cap" in err.value.details()


def test_an_append_stopped_mid_prefill_leaves_the_session_as_it_was(start_pair, segments, loop_thread):
    """The caller goes away after the first chunk of an appended clip (compressed with what the
    session held): the session is exactly as before, by what GetSession reports and by its next
    answer, compared with a twin session that never saw the append."""
    from videoqa.worker.engine import AppendRequest, TurnControl
    from videoqa.worker.types import ProgressEvent, Stage

    address, worker = start_pair(prefill_chunk_frames=2)
    stub = stub_at(address)
    spec_ = spec(frames=FRAMES, pruning=pb.PruningSpec(method="snapkv", budget=0.4))
    sessions = [
        events(stub.CreateSession(upload(spec_, video=segments[0]), timeout=60))["session"][0].session.session_id
        for _ in range(2)
    ]
    before = stub.GetSession(pb.GetSessionRequest(session_id=sessions[0]), timeout=30)

    async def append_then_cancel() -> BaseException | None:
        control = TurnControl()
        request = AppendRequest("default", sessions[0], MediaKind.VIDEO, segments[1], SamplingSpec(num_frames=8))
        try:
            async for event in worker.engine.append(request, control):
                if isinstance(event, ProgressEvent) and event.stage == Stage.PREFILL and 0 < event.fraction < 1:
                    control.cancelled.set()  # one chunk ran and was compressed with the session
        except Exception as error:
            return error
        return None

    assert isinstance(loop_thread.run(append_then_cancel()), TurnCancelled)
    after = stub.GetSession(pb.GetSessionRequest(session_id=sessions[0]), timeout=30)
    for field in ("segments", "context_length", "cache_length", "visual_tokens_after", "kv_bytes", "turns"):
        assert getattr(after, field) == getattr(before, field), field
    assert list(after.frames.timestamps) == list(before.frames.timestamps)
    hot = ask(stub, sessions[0], "what is in the video?")
    assert hot == ask(stub, sessions[1], "what is in the video?")
    stored = start_pair()[0]  # a worker restoring both from Redis, as they were stored
    assert ask(stub_at(stored), sessions[0], "and then?") == ask(stub_at(stored), sessions[1], "and then?")
