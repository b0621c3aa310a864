"""Plain dataclasses of the client API.

Users of :mod:`videoqa.client` only ever see these types, never protobuf messages; the
conversions live in :mod:`videoqa.client.convert`. Enumerations are lower-case strings
(``"decode"``, ``"video"``, ``"stop"``), with ``"unspecified"`` for the proto's zero value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: Stages reported by :class:`Progress`, in the order the server runs them.
STAGES: tuple[str, ...] = ("upload", "decode", "encode", "prefill", "prune", "save")


# --------------------------------------------------------------------------------------------
# Request options


@dataclass
class FrameSampling:
    """How frames are sampled from the media.

    Give at most one of ``num_frames`` (exactly this many frames, spread uniformly) and ``fps``
    (frames per second of video time); neither means the server's default frame count.
    ``max_frames`` and ``max_resolution`` (longest side in pixels) of 0 mean the server's limit.
    """

    num_frames: int | None = None
    fps: float | None = None
    max_frames: int = 0
    max_resolution: int = 0

    def __post_init__(self) -> None:
        if self.num_frames is not None and self.fps is not None:
            raise ValueError("give at most one of num_frames and fps")


@dataclass
class Reduction:
    """Visual tokens dropped before the language model (after the vision tower), at their
    original positions; the KV method then prunes what is left.

    ``method`` empty (or ``"none"``) means no reduction; ``retention`` is the fraction of the
    media's visual tokens that go into the language model, in (0, 1], where 0 means 1.0;
    ``params`` by name (see :meth:`VideoQAClient.list_reductions`).
    """

    method: str = ""
    params: dict[str, float] = field(default_factory=dict)
    retention: float = 0.0


@dataclass
class Pruning:
    """Which KV pruning method to use and how hard to prune.

    ``method`` empty means the server default; ``budget`` is the fraction of visual tokens
    kept, in (0, 1], where 0 means 1.0 (nothing pruned); ``params`` are method parameters by
    name (see :meth:`VideoQAClient.list_methods`). ``max_visual_tokens`` caps the visual entries
    each layer keeps whatever the media's length (0: no cap), which bounds a session that media
    is appended to; it needs a method that compresses progressively. ``reduction`` drops visual
    tokens before the language model; ``budget`` is then a fraction of the tokens left.
    """

    method: str = ""
    params: dict[str, float] = field(default_factory=dict)
    budget: float = 0.0
    max_visual_tokens: int = 0
    reduction: Reduction = field(default_factory=Reduction)

    def __post_init__(self) -> None:
        if self.max_visual_tokens < 0:
            raise ValueError("max_visual_tokens must not be negative")


@dataclass
class Generation:
    """Decoding parameters of one turn; zero values mean the server's defaults.

    ``temperature`` 0 is greedy decoding; ``top_p`` 0 means 1.0; ``seed`` makes sampling
    reproducible.
    """

    max_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class Timeouts:
    """Default deadlines, in seconds, of the client's calls (each is overridable per call)."""

    #: GetSession, DeleteSession, ListModels, ListMethods, GetServerInfo.
    unary: float = 30.0
    #: CreateSession: upload, decode, encode, prefill and the optional first answer.
    create_session: float = 600.0
    #: Ask: one streamed answer.
    ask: float = 300.0
    #: AppendMedia: upload, decode, encode and prefill of an appended segment.
    append_media: float = 600.0


# --------------------------------------------------------------------------------------------
# Sessions


@dataclass(frozen=True)
class SampledFrames:
    """The frames that sampling actually produced, as echoed by the server."""

    indices: list[int] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    width: int = 0
    height: int = 0
    source_frames: int = 0
    source_fps: float = 0.0
    source_duration_seconds: float = 0.0


@dataclass(frozen=True)
class SessionInfo:
    """A session: model, frames used, cache sizes and turns.

    ``frames`` lists every frame of every media piece the session holds (the upload, then each
    appended segment), with timestamps on one session clock; ``segments`` counts those pieces.
    """

    session_id: str
    model: str = ""
    media_kind: str = "unspecified"
    sampling: FrameSampling = field(default_factory=FrameSampling)
    frames: SampledFrames = field(default_factory=SampledFrames)
    pruning: Pruning = field(default_factory=Pruning)
    turns: int = 0
    context_length: int = 0
    cache_length: int = 0
    visual_tokens_before: int = 0
    visual_tokens_after: int = 0
    kv_bytes: int = 0
    created_at: float = 0.0
    last_used_at: float = 0.0
    #: Media pieces the session holds: 1 for the upload, plus one per appended segment.
    segments: int = 0
    #: Visual tokens the vision tower made, before a reduction (``visual_tokens_before`` went into
    #: the language model).
    visual_tokens_encoded: int = 0


# --------------------------------------------------------------------------------------------
# Streamed events


@dataclass(frozen=True)
class Progress:
    """Progress of one server-side stage (see :data:`STAGES`).

    ``fraction`` is in [0, 1], 1 meaning the stage has finished; ``seconds`` is the time the
    stage took, set when it has finished.
    """

    stage: str
    fraction: float = 0.0
    seconds: float = 0.0
    detail: str = ""

    @property
    def done(self) -> bool:
        """Whether this event reports the end of its stage."""
        return self.fraction >= 1.0


@dataclass(frozen=True)
class SessionCreated:
    """Sent once the session exists (after the media has been encoded and its cache built), and
    at the end of an append, with the session as it now is."""

    session: SessionInfo


@dataclass(frozen=True)
class Token:
    """One generated token; ``text`` may be empty while a multi-byte character is incomplete."""

    text: str
    token_id: int = 0
    #: Index of the token within this turn's answer, from 0.
    index: int = 0


@dataclass(frozen=True)
class Timings:
    """Seconds spent in each phase of a turn."""

    upload_seconds: float = 0.0
    decode_seconds: float = 0.0
    encode_seconds: float = 0.0
    prefill_seconds: float = 0.0
    prune_seconds: float = 0.0
    save_seconds: float = 0.0
    time_to_first_token_seconds: float = 0.0
    generate_seconds: float = 0.0
    total_seconds: float = 0.0
    queue_seconds: float = 0.0


@dataclass(frozen=True)
class TurnStats:
    """Statistics of one turn, sent after its last token."""

    session_id: str = ""
    #: Turn number within the session, from 1.
    turn: int = 0
    frames_used: int = 0
    visual_tokens_before: int = 0
    visual_tokens_after: int = 0
    #: Cache entries that summarise evicted tokens.
    recycled_tokens: int = 0
    kv_bytes_before: int = 0
    kv_bytes_after: int = 0
    context_length: int = 0
    cache_length: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    #: ``"stop"`` (the model ended its answer), ``"length"`` (max_new_tokens reached).
    finish_reason: str = "unspecified"
    timings: Timings = field(default_factory=Timings)
    #: Peak CUDA memory allocated while the turn ran (0 off CUDA).
    gpu_peak_bytes: int = 0
    #: Nothing ran: this call's idempotency key had stored the turn already (a retry after a lost
    #: reply), and these are its stats and its answer.
    replayed: bool = False
    #: Visual tokens the vision tower made, before a reduction (``visual_tokens_before`` went into
    #: the language model).
    visual_tokens_encoded: int = 0


#: Any event of a streamed reply.
Event = Progress | SessionCreated | Token | TurnStats


@dataclass(frozen=True)
class Answer:
    """A collected answer: its full text, its tokens and the turn's stats."""

    text: str
    tokens: list[Token] = field(default_factory=list)
    stats: TurnStats | None = None

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> Answer:
        """Collects the :class:`Token` and :class:`TurnStats` events of one turn."""
        tokens: list[Token] = []
        stats: TurnStats | None = None
        for event in events:
            if isinstance(event, Token):
                tokens.append(event)
            elif isinstance(event, TurnStats):
                stats = event
        return cls(text="".join(t.text for t in tokens), tokens=tokens, stats=stats)


# --------------------------------------------------------------------------------------------
# Deployment


@dataclass(frozen=True)
class ModelInfo:
    """A model this deployment serves."""

    id: str
    family: str = ""
    is_default: bool = False
    revision: str = ""
    dtype: str = ""
    #: Bytes of KV cache per token of context (every layer with a KV cache, keys and values).
    kv_bytes_per_token: int = 0
    #: Layers with a KV cache: those pruning applies to (all but a hybrid model's linear ones).
    attention_layers: int = 0
    #: Layers with linear attention (hybrid models such as Qwen3.5), and the bytes of their
    #: fixed-size state per session (counted in a session's ``kv_bytes``).
    linear_attention_layers: int = 0
    linear_state_bytes: int = 0


@dataclass(frozen=True)
class MethodParam:
    """A parameter of a pruning method, with its default and bounds."""

    name: str
    description: str = ""
    default: float = 0.0
    min: float = 0.0
    max: float = 0.0
    integer: bool = False


@dataclass(frozen=True)
class MethodInfo:
    """A KV pruning method."""

    name: str
    description: str = ""
    params: list[MethodParam] = field(default_factory=list)
    is_default: bool = False
    #: Compresses step by step: accepts a cap on visual entries, and its sessions accept appended media.
    progressive: bool = False


@dataclass(frozen=True)
class Limits:
    """Caps of this deployment (0 means no cap or unknown)."""

    max_upload_bytes: int = 0
    max_frames: int = 0
    max_images: int = 0
    max_resolution: int = 0
    max_question_chars: int = 0
    max_new_tokens: int = 0
    default_frames: int = 0
    default_max_new_tokens: int = 0
    #: Frames a session may hold over all its media (upload and appended segments).
    max_session_frames: int = 0
    #: Frames per prefill chunk (0: a video is prefilled in one forward).
    prefill_chunk_frames: int = 0


@dataclass(frozen=True)
class ServerInfo:
    """Limits and versions of a deployment."""

    version: str = ""
    api_version: str = ""
    limits: Limits = field(default_factory=Limits)
    default_model: str = ""
    #: Where sessions live: ``"memory"`` or ``"redis"``.
    session_store: str = ""
    runtime_versions: dict[str, str] = field(default_factory=dict)
    workers: int = 0
