"""What a turn asks for, checked against the worker's limits before any work is done.

Every check here is cheap (no model, no store, no decoding) and runs on the RPC side; whatever
fails is an ``InvalidInput`` (INVALID_ARGUMENT) or ``LimitExceeded`` (RESOURCE_EXHAUSTED) naming
the field at fault.
"""

from __future__ import annotations

from dataclasses import dataclass

from videoqa.worker.errors import InvalidInput, LimitExceeded
from videoqa.worker.settings import WorkerSettings
from videoqa.worker.types import GenerationParams, Limits, MediaKind, PruningSpec, SamplingSpec


@dataclass
class CreateRequest:
    """A validated-at-the-edge upload, as the engine receives it."""

    tenant: str
    session_id: str
    model: str
    media_kind: MediaKind
    #: The video file's bytes, or one encoded image per list item.
    payload: bytes | list[bytes]
    sampling: SamplingSpec
    pruning: PruningSpec
    question: str | None
    generation: GenerationParams
    image_fps: float = 0.0
    upload_s: float = 0.0


@dataclass
class AppendRequest:
    """Media to append to an existing session (a live stream's next segment, a long recording's
    next part)."""

    tenant: str
    session_id: str
    media_kind: MediaKind
    payload: bytes | list[bytes]
    sampling: SamplingSpec
    image_fps: float = 0.0
    upload_s: float = 0.0
    #: Idempotency key: a retry with the same key returns the stored outcome ("": none).
    idempotency_key: str = ""


class RequestLimits:
    """The worker's limits applied to requests (see :class:`WorkerSettings` for each)."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings

    def describe(self) -> Limits:
        s = self.settings
        return Limits(
            max_upload_bytes=s.max_upload_bytes,
            max_frames=s.max_frames,
            max_images=s.max_images,
            max_resolution=s.max_resolution,
            max_question_chars=s.max_question_chars,
            max_new_tokens=s.max_new_tokens,
            default_frames=s.default_frames,
            default_max_new_tokens=s.default_max_new_tokens,
            max_session_frames=s.max_session_frames,
            prefill_chunk_frames=s.prefill_chunk_frames,
        )

    def sampling(self, spec: SamplingSpec) -> SamplingSpec:
        """Apply server limits and defaults to a requested sampling spec."""
        s = self.settings
        if spec.num_frames is not None and spec.num_frames <= 0:
            raise InvalidInput("sampling.num_frames must be at least 1", field="sampling.num_frames")
        if spec.fps is not None and not spec.fps > 0:
            raise InvalidInput("sampling.fps must be positive", field="sampling.fps")
        if spec.max_frames > s.max_frames:
            raise LimitExceeded(
                f"sampling.max_frames {spec.max_frames} exceeds this server's limit of {s.max_frames}",
                field="sampling.max_frames",
            )
        if spec.num_frames is not None and spec.num_frames > s.max_frames:
            raise LimitExceeded(
                f"{spec.num_frames} frames requested; this server samples at most {s.max_frames} per request",
                field="sampling.num_frames",
            )
        if spec.max_resolution > s.max_resolution:
            raise LimitExceeded(
                f"sampling.max_resolution {spec.max_resolution} exceeds the limit of {s.max_resolution}",
                field="sampling.max_resolution",
            )
        return SamplingSpec(
            num_frames=spec.num_frames,
            fps=spec.fps,
            max_frames=spec.max_frames or s.max_frames,
            max_resolution=spec.max_resolution or s.max_resolution,
            default_frames=min(s.default_frames, spec.max_frames or s.max_frames),
        )

    def generation(self, params: GenerationParams) -> GenerationParams:
        s = self.settings
        if params.max_new_tokens < 0 or params.max_new_tokens > s.max_new_tokens:
            raise LimitExceeded(
                f"max_new_tokens {params.max_new_tokens} exceeds the limit of {s.max_new_tokens}",
                field="generation.max_new_tokens",
            )
        if not (params.temperature >= 0) or params.temperature > 100:
            raise InvalidInput("temperature must be in [0, 100]", field="generation.temperature")
        if not (0 <= params.top_p <= 1):
            raise InvalidInput("top_p must be in [0, 1]", field="generation.top_p")
        return GenerationParams(
            max_new_tokens=params.max_new_tokens or s.default_max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p or 1.0,
            seed=params.seed,
        )

    @staticmethod
    def idempotency_key(key: str) -> str:
        """``key`` if well formed (1-128 of ``A-Za-z0-9._:-``) or empty."""
        from videoqa.worker.kvcache.manifest import IDEMPOTENCY_KEY

        if key and not IDEMPOTENCY_KEY.match(key):
            raise InvalidInput(
                "idempotency_key must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'",
                field="idempotency_key",
            )
        return key

    def question(self, question: str) -> str:
        if not question or not question.strip():
            raise InvalidInput("the question is empty", field="question")
        if len(question) > self.settings.max_question_chars:
            raise InvalidInput(
                f"the question has {len(question)} characters; the limit is {self.settings.max_question_chars}",
                field="question",
            )
        return question

    def payload(self, kind: MediaKind, payload: bytes | list[bytes]) -> None:
        s = self.settings
        if kind == MediaKind.IMAGES:
            assert isinstance(payload, list)
            if not payload:
                raise InvalidInput("the image sequence is empty", field="image")
            if len(payload) > s.max_images:
                raise LimitExceeded(f"{len(payload)} images uploaded; the limit is {s.max_images}", field="image")
            if any(not part for part in payload):
                raise InvalidInput("an image of the sequence is empty", field="image")
            size = sum(len(part) for part in payload)
        else:
            if not payload:
                raise InvalidInput("the upload is empty", field="video_chunk")
            size = len(payload)
        if size > s.max_upload_bytes:
            raise LimitExceeded(f"the upload has {size} bytes; the limit is {s.max_upload_bytes}")

    def session_frames(self, held: int, adding: int) -> None:
        """A session holding ``held`` frames may take ``adding`` more."""
        limit = self.settings.max_session_frames
        if held + adding > limit:
            raise LimitExceeded(
                f"the session holds {held} frames and this media adds {adding}; a session holds at most {limit}",
                field="sampling",
            )
