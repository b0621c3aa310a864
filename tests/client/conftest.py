"""A real gRPC server with a scripted ``VideoQA`` servicer, for the client tests.

The servicer records what it receives (uploads and appended media reassembled, requests,
metadata, deadlines, attempts per method) and can be told to fail: ``fail[method]`` is a list of
status codes used by successive attempts before any event is sent (``None`` meaning succeed);
``fail_mid[method]`` aborts after the first event (``"CreateSession.answer"``: after the first
token of the answer CreateSession streams). This module imports only grpc, protobuf and the client, so that
``test_no_torch`` can load it in a subprocess with the heavy modules blocked. Tests reach it
through the ``scripted_server`` fixture (``conftest`` is imported by name for type hints only).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from videoqa.client import convert
from videoqa.client.types import (
    Limits,
    MethodInfo,
    MethodParam,
    ModelInfo,
    Progress,
    SampledFrames,
    ServerInfo,
    SessionCreated,
    SessionInfo,
    Timings,
    Token,
    TurnStats,
)
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc as pb_grpc

STAGE_EVENTS = [
    Progress("upload", 1.0, 0.01),
    Progress("decode", 0.5),
    Progress("decode", 1.0, 0.02, "8 frames"),
    Progress("encode", 1.0, 0.03),
    Progress("prefill", 1.0, 0.04),
    Progress("prune", 1.0, 0.005),
    Progress("save", 1.0, 0.001),
]
MODELS = [
    ModelInfo("qwen2.5-vl-3b", "qwen2_5_vl", True, "abc123", "bfloat16", 36864),
    ModelInfo("llava-ov-0.5b", "llava_onevision", False, "def456", "float16", 12288),
]
METHODS = [
    MethodInfo("none", "keep everything", [], False),
    MethodInfo(
        "snapkv",
        "attention-based selection",
        [MethodParam("window", "observation window", 32, 1, 512, True)],
        True,
    ),
]
REDUCTIONS = [
    MethodInfo("evs", "drops repeated tokens", [MethodParam("threshold", "similarity", 0.0, 0.0, 1.0, False)])
]
#: The Progress events AppendMedia streams before its session event (prefill in chunks).
APPEND_EVENTS = [
    Progress("upload", 1.0, 0.01),
    Progress("decode", 0.0),
    Progress("decode", 1.0, 0.02, "4 frames"),
    Progress("encode", 1.0, 0.03),
    Progress("prefill", 0.5, 0.0, "chunk 1/2"),
    Progress("prefill", 1.0, 0.04, "chunk 2/2"),
    Progress("prune", 1.0, 0.005),
    Progress("save", 1.0, 0.001),
]
SERVER_INFO = ServerInfo(
    version="0.1.0",
    api_version="v1",
    limits=Limits(1 << 30, 256, 512, 1344, 4000, 2048, 16, 256, 1024, 4),
    default_model="qwen2.5-vl-3b",
    session_store="memory",
    runtime_versions={"torch": "2.9.0"},
    workers=2,
)


@dataclass
class Upload:
    """One CreateSession or AppendMedia attempt as the server received it."""

    spec: pb.SessionSpec | pb.AppendSpec
    kinds: list[str] = field(default_factory=list)
    video: bytes = b""
    video_chunks: int = 0
    images: list[bytes] = field(default_factory=list)
    image_parts: list[int] = field(default_factory=list)


class ScriptedServicer(pb_grpc.VideoQAServicer):
    """Implements VideoQA with canned answers, recording everything it receives."""

    #: The Progress events CreateSession streams before its session event.
    stage_events = STAGE_EVENTS
    #: The Progress events AppendMedia streams before its session event.
    append_events = APPEND_EVENTS

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.attempts: defaultdict[str, int] = defaultdict(int)
            self.fail: dict[str, list[grpc.StatusCode | None]] = {}
            self.fail_mid: dict[str, grpc.StatusCode] = {}
            self.pushback_ms: str | None = None
            self.uploads: list[Upload] = []
            self.appends: list[Upload] = []
            self.asks: list[pb.AskRequest] = []
            self.time_remaining: defaultdict[str, list[float | None]] = defaultdict(list)
            self.metadata: defaultdict[str, list[dict[str, str]]] = defaultdict(list)
            self.sessions: dict[str, SessionInfo] = {}
            self.deleted: list[str] = []
            self.token_delay = 0.0
            self.cancelled = threading.Event()
            self.skip_session_event = False

    # ----------------------------------------------------------------------------------------

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        """Records the call, then aborts if the script says so."""
        with self.lock:
            self.attempts[method] += 1
            self.time_remaining[method].append(context.time_remaining())
            self.metadata[method].append(dict(context.invocation_metadata()))
            codes = self.fail.get(method)
            code = codes.pop(0) if codes else None
        if code is not None:
            if self.pushback_ms is not None:
                context.set_trailing_metadata((("grpc-retry-pushback-ms", self.pushback_ms),))
            context.abort(code, f"scripted {code.name}")

    def _mid(self, method: str, context: grpc.ServicerContext) -> None:
        code = self.fail_mid.get(method)
        if code is not None:
            context.abort(code, f"scripted mid-stream {code.name}")

    @staticmethod
    def _wait_active(context: grpc.ServicerContext, seconds: float) -> bool:
        """Sleeps ``seconds`` unless the client goes away first; whether it is still there."""
        until = time.monotonic() + seconds
        while context.is_active() and time.monotonic() < until:
            time.sleep(0.005)
        return context.is_active()

    def _answer(
        self, method: str, info: SessionInfo, question: str, context: grpc.ServicerContext
    ) -> Iterator[pb.AskResponse]:
        # gRPC may notice a cancellation itself and drop this generator without resuming it: a
        # termination callback records any end other than a normal one (or a scripted abort).
        cancelled, ended = self.cancelled, threading.Event()
        context.add_callback(lambda: None if ended.is_set() else cancelled.set())
        words = ["Answer", " to", ": ", question]
        for i, word in enumerate(words):
            if i > 0 and not self._wait_active(context, self.token_delay):
                return
            yield convert.event_to_pb(Token(word, 100 + i, i))
            if i == 0:
                key = "Ask" if method == "Ask" else "CreateSession.answer"
                if key in self.fail_mid:
                    ended.set()
                self._mid(key, context)
        with self.lock:
            turn = info.turns + 1
            self.sessions[info.session_id] = SessionInfo(**{**info.__dict__, "turns": turn})
        stats = TurnStats(
            session_id=info.session_id,
            turn=turn,
            frames_used=len(info.frames.indices),
            visual_tokens_before=1024,
            visual_tokens_after=256,
            recycled_tokens=4,
            kv_bytes_before=64 << 20,
            kv_bytes_after=16 << 20,
            context_length=1100,
            cache_length=332,
            prompt_tokens=20,
            generated_tokens=len(words),
            finish_reason="stop",
            timings=Timings(time_to_first_token_seconds=0.125, generate_seconds=0.5, total_seconds=1.0),
        )
        ended.set()
        yield convert.event_to_pb(stats)

    # ----------------------------------------------------------------------------------------

    @staticmethod
    def _read_upload(request_iterator, context: grpc.ServicerContext) -> Upload:
        """Reassembles the media of a CreateSession or an AppendMedia call."""
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "spec":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry spec")
        upload = Upload(spec=first.spec)
        video = bytearray()
        for request in request_iterator:
            kind = request.WhichOneof("payload")
            upload.kinds.append(kind)
            if kind == "video_chunk":
                video += request.video_chunk
                upload.video_chunks += 1
            elif kind == "image":
                index = request.image.index
                if index == len(upload.images):
                    upload.images.append(b"")
                elif index != len(upload.images) - 1:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"image index {index} out of order")
                upload.images[-1] += request.image.data
                upload.image_parts.append(index)
            else:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "spec sent twice")
        upload.video = bytes(video)
        return upload

    def CreateSession(self, request_iterator, context):
        upload = self._read_upload(request_iterator, context)
        with self.lock:
            self.uploads.append(upload)
        self._enter("CreateSession", context)
        for i, event in enumerate(STAGE_EVENTS):
            yield convert.event_to_pb(event)
            if i == 0:
                self._mid("CreateSession", context)
        spec = upload.spec
        n = len(upload.images) or 8
        info = SessionInfo(
            session_id=uuid.uuid4().hex,
            model=spec.model or "qwen2.5-vl-3b",
            media_kind="images" if spec.media_kind == pb.MEDIA_KIND_IMAGES else "video",
            sampling=convert.sampling_from_pb(spec.sampling),
            frames=SampledFrames(list(range(n)), [float(i) for i in range(n)], 448, 252, n, 1.0, float(n)),
            pruning=convert.pruning_from_pb(spec.pruning),
            context_length=1100,
            cache_length=332,
            visual_tokens_before=1024,
            visual_tokens_after=256,
            kv_bytes=16 << 20,
            created_at=time.time(),
            last_used_at=time.time(),
            segments=1,
        )
        with self.lock:
            self.sessions[info.session_id] = info
        if not self.skip_session_event:
            yield convert.event_to_pb(SessionCreated(info))
        if spec.question:
            yield from self._answer("CreateSession", info, spec.question, context)

    def AppendMedia(self, request_iterator, context):
        upload = self._read_upload(request_iterator, context)
        with self.lock:
            self.appends.append(upload)
        self._enter("AppendMedia", context)
        spec = upload.spec
        with self.lock:
            info = self.sessions.get(spec.session_id)
        if info is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no session {spec.session_id}")
        for i, event in enumerate(APPEND_EVENTS):
            yield convert.event_to_pb(event)
            if i == 0:
                self._mid("AppendMedia", context)
        # The segment's frames continue the session's clock, one second apart.
        n = len(upload.images) or spec.sampling.num_frames or 4
        old = info.frames
        start = old.timestamps[-1] + 1.0 if old.timestamps else 0.0
        frames = SampledFrames(
            [*old.indices, *range(n)],
            [*old.timestamps, *(start + i for i in range(n))],
            old.width,
            old.height,
            old.source_frames + n,  # the media of every segment, as the real server reports it
            1.0,
            old.source_duration_seconds + n,
        )
        with self.lock:
            info = self.sessions[spec.session_id] = SessionInfo(
                **{
                    **info.__dict__,
                    "frames": frames,
                    "segments": info.segments + 1,
                    "context_length": info.context_length + 128 * n,
                    "visual_tokens_before": info.visual_tokens_before + 128 * n,
                    "last_used_at": time.time(),
                }
            )
        if not self.skip_session_event:
            yield convert.event_to_pb(SessionCreated(info))

    def Ask(self, request, context):
        self._enter("Ask", context)
        with self.lock:
            self.asks.append(request)
            info = self.sessions.get(request.session_id)
        if info is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id}")
        yield from self._answer("Ask", info, request.question, context)

    def GetSession(self, request, context):
        self._enter("GetSession", context)
        info = self.sessions.get(request.session_id)
        if info is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id}")
        return convert.session_info_to_pb(info)

    def DeleteSession(self, request, context):
        self._enter("DeleteSession", context)
        with self.lock:
            info = self.sessions.pop(request.session_id, None)
            if info is not None:
                self.deleted.append(request.session_id)
        if info is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no session {request.session_id}")
        return pb.DeleteSessionResponse()

    def ListModels(self, request, context):
        self._enter("ListModels", context)
        return pb.ListModelsResponse(models=[convert.model_to_pb(m) for m in MODELS])

    def ListMethods(self, request, context):
        self._enter("ListMethods", context)
        return pb.ListMethodsResponse(
            methods=[convert.method_to_pb(m) for m in METHODS],
            reductions=[convert.method_to_pb(m) for m in REDUCTIONS],
        )

    def GetServerInfo(self, request, context):
        self._enter("GetServerInfo", context)
        return convert.server_info_to_pb(SERVER_INFO)


@dataclass
class RunningServer:
    server: grpc.Server
    servicer: ScriptedServicer
    target: str


def start_server(servicer: ScriptedServicer | None = None) -> RunningServer:
    """Starts a plaintext server on 127.0.0.1 on a free port."""
    servicer = servicer or ScriptedServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_VideoQAServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return RunningServer(server, servicer, f"127.0.0.1:{port}")


@pytest.fixture(scope="session")
def _running_server() -> Iterator[RunningServer]:
    running = start_server()
    yield running
    running.server.stop(0)


@pytest.fixture
def scripted_server(_running_server: RunningServer) -> RunningServer:
    """The shared test server, its script and records reset."""
    _running_server.servicer.reset()
    return _running_server
