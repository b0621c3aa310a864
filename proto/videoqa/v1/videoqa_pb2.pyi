from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MediaKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEDIA_KIND_UNSPECIFIED: _ClassVar[MediaKind]
    MEDIA_KIND_VIDEO: _ClassVar[MediaKind]
    MEDIA_KIND_IMAGES: _ClassVar[MediaKind]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
MEDIA_KIND_UNSPECIFIED: MediaKind
MEDIA_KIND_VIDEO: MediaKind
MEDIA_KIND_IMAGES: MediaKind
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason

class FrameSampling(_message.Message):
    __slots__ = ("num_frames", "fps", "max_frames", "max_resolution")
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    num_frames: int
    fps: float
    max_frames: int
    max_resolution: int
    def __init__(self, num_frames: _Optional[int] = ..., fps: _Optional[float] = ..., max_frames: _Optional[int] = ..., max_resolution: _Optional[int] = ...) -> None: ...

class PruningSpec(_message.Message):
    __slots__ = ("method", "params", "budget", "max_visual_tokens", "reduction")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    MAX_VISUAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    method: str
    params: _containers.ScalarMap[str, float]
    budget: float
    max_visual_tokens: int
    reduction: ReductionSpec
    def __init__(self, method: _Optional[str] = ..., params: _Optional[_Mapping[str, float]] = ..., budget: _Optional[float] = ..., max_visual_tokens: _Optional[int] = ..., reduction: _Optional[_Union[ReductionSpec, _Mapping]] = ...) -> None: ...

class ReductionSpec(_message.Message):
    __slots__ = ("method", "params", "retention")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    method: str
    params: _containers.ScalarMap[str, float]
    retention: float
    def __init__(self, method: _Optional[str] = ..., params: _Optional[_Mapping[str, float]] = ..., retention: _Optional[float] = ...) -> None: ...

class GenerationParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "seed")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class SessionSpec(_message.Message):
    __slots__ = ("model", "media_kind", "total_bytes", "sampling", "pruning", "question", "generation", "image_fps")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEDIA_KIND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PRUNING_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    media_kind: MediaKind
    total_bytes: int
    sampling: FrameSampling
    pruning: PruningSpec
    question: str
    generation: GenerationParams
    image_fps: float
    def __init__(self, model: _Optional[str] = ..., media_kind: _Optional[_Union[MediaKind, str]] = ..., total_bytes: _Optional[int] = ..., sampling: _Optional[_Union[FrameSampling, _Mapping]] = ..., pruning: _Optional[_Union[PruningSpec, _Mapping]] = ..., question: _Optional[str] = ..., generation: _Optional[_Union[GenerationParams, _Mapping]] = ..., image_fps: _Optional[float] = ...) -> None: ...

class ImagePart(_message.Message):
    __slots__ = ("index", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("spec", "video_chunk", "image")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VIDEO_CHUNK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    spec: SessionSpec
    video_chunk: bytes
    image: ImagePart
    def __init__(self, spec: _Optional[_Union[SessionSpec, _Mapping]] = ..., video_chunk: _Optional[bytes] = ..., image: _Optional[_Union[ImagePart, _Mapping]] = ...) -> None: ...

class AppendSpec(_message.Message):
    __slots__ = ("session_id", "media_kind", "total_bytes", "sampling", "image_fps", "idempotency_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MEDIA_KIND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FPS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    media_kind: MediaKind
    total_bytes: int
    sampling: FrameSampling
    image_fps: float
    idempotency_key: str
    def __init__(self, session_id: _Optional[str] = ..., media_kind: _Optional[_Union[MediaKind, str]] = ..., total_bytes: _Optional[int] = ..., sampling: _Optional[_Union[FrameSampling, _Mapping]] = ..., image_fps: _Optional[float] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class AppendMediaRequest(_message.Message):
    __slots__ = ("spec", "video_chunk", "image")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VIDEO_CHUNK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    spec: AppendSpec
    video_chunk: bytes
    image: ImagePart
    def __init__(self, spec: _Optional[_Union[AppendSpec, _Mapping]] = ..., video_chunk: _Optional[bytes] = ..., image: _Optional[_Union[ImagePart, _Mapping]] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("session_id", "question", "generation", "idempotency_key")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    question: str
    generation: GenerationParams
    idempotency_key: str
    def __init__(self, session_id: _Optional[str] = ..., question: _Optional[str] = ..., generation: _Optional[_Union[GenerationParams, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("progress", "session", "token", "stats")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    session: SessionCreated
    token: TokenDelta
    stats: TurnStats
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., session: _Optional[_Union[SessionCreated, _Mapping]] = ..., token: _Optional[_Union[TokenDelta, _Mapping]] = ..., stats: _Optional[_Union[TurnStats, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "fraction", "seconds", "detail")
    class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STAGE_UNSPECIFIED: _ClassVar[Progress.Stage]
        STAGE_UPLOAD: _ClassVar[Progress.Stage]
        STAGE_DECODE: _ClassVar[Progress.Stage]
        STAGE_ENCODE: _ClassVar[Progress.Stage]
        STAGE_PREFILL: _ClassVar[Progress.Stage]
        STAGE_PRUNE: _ClassVar[Progress.Stage]
        STAGE_SAVE: _ClassVar[Progress.Stage]
    STAGE_UNSPECIFIED: Progress.Stage
    STAGE_UPLOAD: Progress.Stage
    STAGE_DECODE: Progress.Stage
    STAGE_ENCODE: Progress.Stage
    STAGE_PREFILL: Progress.Stage
    STAGE_PRUNE: Progress.Stage
    STAGE_SAVE: Progress.Stage
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    stage: Progress.Stage
    fraction: float
    seconds: float
    detail: str
    def __init__(self, stage: _Optional[_Union[Progress.Stage, str]] = ..., fraction: _Optional[float] = ..., seconds: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class SessionCreated(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: SessionInfo
    def __init__(self, session: _Optional[_Union[SessionInfo, _Mapping]] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ("text", "token_id", "index")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_id: int
    index: int
    def __init__(self, text: _Optional[str] = ..., token_id: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("upload_seconds", "decode_seconds", "encode_seconds", "prefill_seconds", "prune_seconds", "save_seconds", "time_to_first_token_seconds", "generate_seconds", "total_seconds", "queue_seconds")
    UPLOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PRUNE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SAVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    upload_seconds: float
    decode_seconds: float
    encode_seconds: float
    prefill_seconds: float
    prune_seconds: float
    save_seconds: float
    time_to_first_token_seconds: float
    generate_seconds: float
    total_seconds: float
    queue_seconds: float
    def __init__(self, upload_seconds: _Optional[float] = ..., decode_seconds: _Optional[float] = ..., encode_seconds: _Optional[float] = ..., prefill_seconds: _Optional[float] = ..., prune_seconds: _Optional[float] = ..., save_seconds: _Optional[float] = ..., time_to_first_token_seconds: _Optional[float] = ..., generate_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., queue_seconds: _Optional[float] = ...) -> None: ...

class TurnStats(_message.Message):
    __slots__ = ("session_id", "turn", "frames_used", "visual_tokens_before", "visual_tokens_after", "recycled_tokens", "kv_bytes_before", "kv_bytes_after", "context_length", "cache_length", "prompt_tokens", "generated_tokens", "finish_reason", "timings", "gpu_peak_bytes", "replayed", "visual_tokens_encoded")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    FRAMES_USED_FIELD_NUMBER: _ClassVar[int]
    VISUAL_TOKENS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    VISUAL_TOKENS_AFTER_FIELD_NUMBER: _ClassVar[int]
    RECYCLED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_AFTER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CACHE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    GPU_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    VISUAL_TOKENS_ENCODED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
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
    gpu_peak_bytes: int
    replayed: bool
    visual_tokens_encoded: int
    def __init__(self, session_id: _Optional[str] = ..., turn: _Optional[int] = ..., frames_used: _Optional[int] = ..., visual_tokens_before: _Optional[int] = ..., visual_tokens_after: _Optional[int] = ..., recycled_tokens: _Optional[int] = ..., kv_bytes_before: _Optional[int] = ..., kv_bytes_after: _Optional[int] = ..., context_length: _Optional[int] = ..., cache_length: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., gpu_peak_bytes: _Optional[int] = ..., replayed: _Optional[bool] = ..., visual_tokens_encoded: _Optional[int] = ...) -> None: ...

class SampledFrames(_message.Message):
    __slots__ = ("indices", "timestamps", "width", "height", "source_frames", "source_fps", "source_duration_seconds")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FPS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    timestamps: _containers.RepeatedScalarFieldContainer[float]
    width: int
    height: int
    source_frames: int
    source_fps: float
    source_duration_seconds: float
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., timestamps: _Optional[_Iterable[float]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., source_frames: _Optional[int] = ..., source_fps: _Optional[float] = ..., source_duration_seconds: _Optional[float] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "model", "media_kind", "sampling", "frames", "pruning", "turns", "context_length", "cache_length", "visual_tokens_before", "visual_tokens_after", "kv_bytes", "created_at", "last_used_at", "segments", "visual_tokens_encoded")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEDIA_KIND_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    PRUNING_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CACHE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VISUAL_TOKENS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    VISUAL_TOKENS_AFTER_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    VISUAL_TOKENS_ENCODED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    media_kind: MediaKind
    sampling: FrameSampling
    frames: SampledFrames
    pruning: PruningSpec
    turns: int
    context_length: int
    cache_length: int
    visual_tokens_before: int
    visual_tokens_after: int
    kv_bytes: int
    created_at: float
    last_used_at: float
    segments: int
    visual_tokens_encoded: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., media_kind: _Optional[_Union[MediaKind, str]] = ..., sampling: _Optional[_Union[FrameSampling, _Mapping]] = ..., frames: _Optional[_Union[SampledFrames, _Mapping]] = ..., pruning: _Optional[_Union[PruningSpec, _Mapping]] = ..., turns: _Optional[int] = ..., context_length: _Optional[int] = ..., cache_length: _Optional[int] = ..., visual_tokens_before: _Optional[int] = ..., visual_tokens_after: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., created_at: _Optional[float] = ..., last_used_at: _Optional[float] = ..., segments: _Optional[int] = ..., visual_tokens_encoded: _Optional[int] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("id", "family", "is_default", "revision", "dtype", "kv_bytes_per_token", "attention_layers", "linear_attention_layers", "linear_state_bytes")
    ID_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LINEAR_ATTENTION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LINEAR_STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    family: str
    is_default: bool
    revision: str
    dtype: str
    kv_bytes_per_token: int
    attention_layers: int
    linear_attention_layers: int
    linear_state_bytes: int
    def __init__(self, id: _Optional[str] = ..., family: _Optional[str] = ..., is_default: _Optional[bool] = ..., revision: _Optional[str] = ..., dtype: _Optional[str] = ..., kv_bytes_per_token: _Optional[int] = ..., attention_layers: _Optional[int] = ..., linear_attention_layers: _Optional[int] = ..., linear_state_bytes: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ListMethodsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MethodParam(_message.Message):
    __slots__ = ("name", "description", "default", "min", "max", "integer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    default: float
    min: float
    max: float
    integer: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., default: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., integer: _Optional[bool] = ...) -> None: ...

class MethodInfo(_message.Message):
    __slots__ = ("name", "description", "params", "is_default", "progressive")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    PROGRESSIVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    params: _containers.RepeatedCompositeFieldContainer[MethodParam]
    is_default: bool
    progressive: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., params: _Optional[_Iterable[_Union[MethodParam, _Mapping]]] = ..., is_default: _Optional[bool] = ..., progressive: _Optional[bool] = ...) -> None: ...

class ListMethodsResponse(_message.Message):
    __slots__ = ("methods", "reductions")
    METHODS_FIELD_NUMBER: _ClassVar[int]
    REDUCTIONS_FIELD_NUMBER: _ClassVar[int]
    methods: _containers.RepeatedCompositeFieldContainer[MethodInfo]
    reductions: _containers.RepeatedCompositeFieldContainer[MethodInfo]
    def __init__(self, methods: _Optional[_Iterable[_Union[MethodInfo, _Mapping]]] = ..., reductions: _Optional[_Iterable[_Union[MethodInfo, _Mapping]]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_upload_bytes", "max_frames", "max_images", "max_resolution", "max_question_chars", "max_new_tokens", "default_frames", "default_max_new_tokens", "max_session_frames", "prefill_chunk_frames")
    MAX_UPLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    MAX_QUESTION_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSION_FRAMES_FIELD_NUMBER: _ClassVar[int]
    PREFILL_CHUNK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    max_upload_bytes: int
    max_frames: int
    max_images: int
    max_resolution: int
    max_question_chars: int
    max_new_tokens: int
    default_frames: int
    default_max_new_tokens: int
    max_session_frames: int
    prefill_chunk_frames: int
    def __init__(self, max_upload_bytes: _Optional[int] = ..., max_frames: _Optional[int] = ..., max_images: _Optional[int] = ..., max_resolution: _Optional[int] = ..., max_question_chars: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., default_frames: _Optional[int] = ..., default_max_new_tokens: _Optional[int] = ..., max_session_frames: _Optional[int] = ..., prefill_chunk_frames: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "api_version", "limits", "default_model", "session_store", "runtime_versions", "workers")
    class RuntimeVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    SESSION_STORE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    version: str
    api_version: str
    limits: Limits
    default_model: str
    session_store: str
    runtime_versions: _containers.ScalarMap[str, str]
    workers: int
    def __init__(self, version: _Optional[str] = ..., api_version: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., default_model: _Optional[str] = ..., session_store: _Optional[str] = ..., runtime_versions: _Optional[_Mapping[str, str]] = ..., workers: _Optional[int] = ...) -> None: ...
