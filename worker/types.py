"""Plain data exchanged between the service layer and the worker runtime (no torch, no proto)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class MediaKind(str, enum.Enum):
    VIDEO = "video"
    IMAGES = "images"


@dataclass(frozen=True)
class SamplingSpec:
    """How frames are taken from the media. Exactly one of ``num_frames`` / ``fps`` may be set;
    neither means the server default frame count (``default_frames``)."""

    num_frames: int | None = None
    fps: float | None = None
    #: Upper bound on sampled frames (already resolved against the server limit).
    max_frames: int = 32
    #: Longest side of a decoded frame in pixels; frames are downscaled, never upscaled.
    max_resolution: int = 448
    #: Frame count used when neither ``num_frames`` nor ``fps`` is given.
    default_frames: int = 8


@dataclass
class DecodedMedia:
    """Frames sampled from an upload.

    ``frames`` has shape (T, H, W, 3), dtype uint8, RGB. ``indices[i]`` is the source frame number
    (or image index) of frame i and ``timestamps[i]`` its presentation time in seconds.
    """

    frames: np.ndarray
    indices: list[int]
    timestamps: list[float]
    source_frames: int
    source_fps: float
    duration_s: float

    @classmethod
    def from_array(cls, frames: np.ndarray, fps: float = 2.0) -> DecodedMedia:
        """Every frame of ``frames`` [T, H, W, 3] uint8, taken at ``fps`` (tests, training, benchmarks)."""
        count = len(frames)
        return cls(frames, list(range(count)), [i / fps for i in range(count)], count, fps, count / fps)

    @property
    def sampled_fps(self) -> float:
        """Frames per second of the sampled sequence (what temporal position ids assume)."""
        if len(self.timestamps) < 2:
            return self.source_fps or 1.0
        span = self.timestamps[-1] - self.timestamps[0]
        return (len(self.timestamps) - 1) / span if span > 0 else (self.source_fps or 1.0)


@dataclass(frozen=True)
class ReductionSpec:
    """Visual tokens dropped before the language model (after the vision tower and merger).
    ``method`` "" (or "none"): none."""

    method: str = ""
    params: dict[str, float] = field(default_factory=dict)
    #: Fraction of the video's visual tokens that go into the language model, in (0, 1].
    retention: float = 1.0

    @property
    def active(self) -> bool:
        return self.method not in ("", "none")


@dataclass(frozen=True)
class PruningSpec:
    method: str = "full"
    params: dict[str, float] = field(default_factory=dict)
    #: Fraction of visual tokens kept, in (0, 1]: of those the language model sees (after
    #: ``reduction``, when one is set).
    budget: float = 1.0
    #: Most visual entries a layer keeps, whatever the video's length (0: no cap); needs a method
    #: that compresses progressively.
    max_visual_tokens: int = 0
    #: Reduction before the language model, composed with the KV method above.
    reduction: ReductionSpec = field(default_factory=ReductionSpec)


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    #: 0 means greedy.
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


# --- events streamed by the engine ------------------------------------------------------------


class Stage(str, enum.Enum):
    UPLOAD = "upload"
    DECODE = "decode"
    ENCODE = "encode"
    PREFILL = "prefill"
    PRUNE = "prune"
    SAVE = "save"


@dataclass
class ProgressEvent:
    stage: Stage
    #: In [0, 1]; 1 means the stage finished and ``seconds`` is its duration.
    fraction: float
    seconds: float = 0.0
    detail: str = ""


@dataclass
class TokenEvent:
    text: str
    token_id: int
    index: int


@dataclass
class Timings:
    upload_s: float = 0.0
    decode_s: float = 0.0
    encode_s: float = 0.0
    prefill_s: float = 0.0
    prune_s: float = 0.0
    save_s: float = 0.0
    ttft_s: float = 0.0
    generate_s: float = 0.0
    total_s: float = 0.0
    queue_s: float = 0.0


@dataclass
class SessionSnapshot:
    """What ``GetSession`` reports."""

    session_id: str
    model: str
    media_kind: MediaKind
    sampling: SamplingSpec
    frame_indices: list[int]
    frame_timestamps: list[float]
    frame_width: int
    frame_height: int
    source_frames: int
    source_fps: float
    source_duration_s: float
    pruning: PruningSpec
    turns: int
    context_length: int
    cache_length: int
    visual_tokens_before: int
    visual_tokens_after: int
    kv_bytes: int
    created_at: float
    last_used_at: float
    #: Media pieces: the upload, then every segment appended to it.
    segments: int = 1
    #: Visual tokens the vision tower made of the media, before a reduction before the language
    #: model (``visual_tokens_before`` went into it; equal without one).
    visual_tokens_encoded: int = 0


@dataclass
class SessionEvent:
    """The session exists (sent once, after its cache is built and saved)."""

    session: SessionSnapshot


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"


@dataclass
class TurnStats:
    session_id: str
    model: str
    method: str
    turn: int
    frames_used: int
    visual_tokens_before: int
    visual_tokens_after: int
    recycled_tokens: int
    kv_bytes_before: int
    kv_bytes_after: int
    context_length: int
    cache_length: int
    prompt_tokens: int
    generated_tokens: int
    finish_reason: FinishReason
    timings: Timings
    #: This turn built the session's video cache (CreateSession with a question).
    first: bool = False
    #: Seconds between consecutive answer tokens (generated - 1 entries).
    token_gaps_s: list[float] = field(default_factory=list)
    #: Peak CUDA memory allocated during the turn (0 off CUDA).
    gpu_peak_bytes: int = 0
    #: Nothing ran: a call with the same idempotency key stored this turn, and this is its result.
    replayed: bool = False
    #: Visual tokens the vision tower made of the media, before a reduction before the language
    #: model (``visual_tokens_before`` went into it; equal without one).
    visual_tokens_encoded: int = 0


@dataclass
class StatsEvent:
    stats: TurnStats


Event = ProgressEvent | SessionEvent | TokenEvent | StatsEvent


@dataclass(frozen=True)
class ModelDescription:
    id: str
    family: str
    is_default: bool
    revision: str
    dtype: str
    kv_bytes_per_token: int
    #: Layers with a KV cache (what pruning applies to), layers with linear attention (hybrid
    #: models), and the bytes of a session's linear-attention state.
    attention_layers: int = 0
    linear_attention_layers: int = 0
    linear_state_bytes: int = 0


@dataclass(frozen=True)
class MethodParam:
    name: str
    description: str
    default: float
    min: float
    max: float
    integer: bool = False


@dataclass(frozen=True)
class MethodDescription:
    name: str
    description: str
    params: tuple[MethodParam, ...]
    is_default: bool = False
    #: Compresses step by step (chunked prefill, appended media); accepts ``max_visual_tokens``.
    progressive: bool = False


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int
    max_frames: int
    max_images: int
    max_resolution: int
    max_question_chars: int
    max_new_tokens: int
    default_frames: int
    default_max_new_tokens: int
    #: Frames a session may hold over all its media (uploads and appended segments).
    max_session_frames: int = 0
    #: Frames per prefill chunk (0: a video is prefilled in one forward).
    prefill_chunk_frames: int = 0
