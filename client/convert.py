"""Conversions between the protobuf messages of ``videoqa.v1`` and the client dataclasses.

Both directions are provided: ``*_to_pb`` for what the client sends (and what a test server
replies), ``*_from_pb`` for what the client receives.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from videoqa.v1 import videoqa_pb2 as pb

from .types import (
    Event,
    FrameSampling,
    Generation,
    Limits,
    MethodInfo,
    MethodParam,
    ModelInfo,
    Progress,
    Pruning,
    Reduction,
    SampledFrames,
    ServerInfo,
    SessionCreated,
    SessionInfo,
    Timings,
    Token,
    TurnStats,
)

_T = TypeVar("_T")

# Enum prefixes: STAGE_DECODE -> "decode", MEDIA_KIND_VIDEO -> "video", FINISH_REASON_STOP -> "stop".
_STAGE_PREFIX = "STAGE_"
_MEDIA_KIND_PREFIX = "MEDIA_KIND_"
_FINISH_REASON_PREFIX = "FINISH_REASON_"


def _enum_to_str(enum: Any, value: int, prefix: str) -> str:
    try:
        name: str = enum.Name(value)
    except ValueError:  # a value added to the API after this client was built
        return f"unknown({value})"
    return name.removeprefix(prefix).lower()


def _enum_from_str(enum: Any, value: str, prefix: str) -> int:
    try:
        return int(enum.Value(prefix + (value or "unspecified").upper()))
    except ValueError:
        raise ValueError(f"unknown {prefix.rstrip('_').lower()} {value!r}") from None


def stage_from_pb(value: int) -> str:
    """``Progress.STAGE_DECODE`` -> ``"decode"``."""
    return _enum_to_str(pb.Progress.Stage, value, _STAGE_PREFIX)


def stage_to_pb(value: str) -> int:
    """``"decode"`` -> ``Progress.STAGE_DECODE``."""
    return _enum_from_str(pb.Progress.Stage, value, _STAGE_PREFIX)


def media_kind_from_pb(value: int) -> str:
    """``MEDIA_KIND_IMAGES`` -> ``"images"``."""
    return _enum_to_str(pb.MediaKind, value, _MEDIA_KIND_PREFIX)


def media_kind_to_pb(value: str) -> int:
    """``"images"`` -> ``MEDIA_KIND_IMAGES``."""
    return _enum_from_str(pb.MediaKind, value, _MEDIA_KIND_PREFIX)


def finish_reason_from_pb(value: int) -> str:
    """``FINISH_REASON_LENGTH`` -> ``"length"``."""
    return _enum_to_str(pb.FinishReason, value, _FINISH_REASON_PREFIX)


def finish_reason_to_pb(value: str) -> int:
    """``"length"`` -> ``FINISH_REASON_LENGTH``."""
    return _enum_from_str(pb.FinishReason, value, _FINISH_REASON_PREFIX)


def _flat_from_pb(cls: type[_T], msg: Any) -> _T:
    """Builds a dataclass whose fields are scalar or repeated scalar fields of ``msg``."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(msg, f.name)
        values[f.name] = list(value) if not isinstance(value, (str, bytes, int, float)) else value
    return cls(**values)


def _flat_values(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


# --------------------------------------------------------------------------------------------
# Request options


def sampling_to_pb(sampling: FrameSampling) -> pb.FrameSampling:
    msg = pb.FrameSampling(max_frames=sampling.max_frames, max_resolution=sampling.max_resolution)
    if sampling.num_frames is not None:
        msg.num_frames = sampling.num_frames
    elif sampling.fps is not None:
        msg.fps = sampling.fps
    return msg


def sampling_from_pb(msg: pb.FrameSampling) -> FrameSampling:
    rate = msg.WhichOneof("rate")
    return FrameSampling(
        num_frames=msg.num_frames if rate == "num_frames" else None,
        fps=msg.fps if rate == "fps" else None,
        max_frames=msg.max_frames,
        max_resolution=msg.max_resolution,
    )


def pruning_to_pb(pruning: Pruning) -> pb.PruningSpec:
    msg = pb.PruningSpec(method=pruning.method, budget=pruning.budget, max_visual_tokens=pruning.max_visual_tokens)
    msg.params.update({name: float(value) for name, value in pruning.params.items()})
    reduction = pruning.reduction
    if reduction.method or reduction.params or reduction.retention:
        msg.reduction.method = reduction.method
        msg.reduction.retention = reduction.retention
        msg.reduction.params.update({name: float(value) for name, value in reduction.params.items()})
    return msg


def pruning_from_pb(msg: pb.PruningSpec) -> Pruning:
    reduction = Reduction(msg.reduction.method, dict(msg.reduction.params), msg.reduction.retention)
    return Pruning(
        method=msg.method,
        params=dict(msg.params),
        budget=msg.budget,
        max_visual_tokens=msg.max_visual_tokens,
        reduction=reduction,
    )


def generation_to_pb(generation: Generation) -> pb.GenerationParams:
    msg = pb.GenerationParams(
        max_new_tokens=generation.max_new_tokens,
        temperature=generation.temperature,
        top_p=generation.top_p,
    )
    if generation.seed is not None:
        msg.seed = generation.seed
    return msg


def generation_from_pb(msg: pb.GenerationParams) -> Generation:
    return Generation(
        max_new_tokens=msg.max_new_tokens,
        temperature=msg.temperature,
        top_p=msg.top_p,
        seed=msg.seed if msg.HasField("seed") else None,
    )


# --------------------------------------------------------------------------------------------
# Sessions


def session_info_from_pb(msg: pb.SessionInfo) -> SessionInfo:
    return SessionInfo(
        session_id=msg.session_id,
        model=msg.model,
        media_kind=media_kind_from_pb(msg.media_kind),
        sampling=sampling_from_pb(msg.sampling),
        frames=_flat_from_pb(SampledFrames, msg.frames),
        pruning=pruning_from_pb(msg.pruning),
        turns=msg.turns,
        context_length=msg.context_length,
        cache_length=msg.cache_length,
        visual_tokens_before=msg.visual_tokens_before,
        visual_tokens_after=msg.visual_tokens_after,
        visual_tokens_encoded=msg.visual_tokens_encoded,
        kv_bytes=msg.kv_bytes,
        created_at=msg.created_at,
        last_used_at=msg.last_used_at,
        segments=msg.segments,
    )


def session_info_to_pb(info: SessionInfo) -> pb.SessionInfo:
    values = _flat_values(info)
    values.update(
        media_kind=media_kind_to_pb(info.media_kind),
        sampling=sampling_to_pb(info.sampling),
        frames=pb.SampledFrames(**_flat_values(info.frames)),
        pruning=pruning_to_pb(info.pruning),
    )
    return pb.SessionInfo(**values)


# --------------------------------------------------------------------------------------------
# Events


def turn_stats_from_pb(msg: pb.TurnStats) -> TurnStats:
    values: dict[str, Any] = {
        f.name: getattr(msg, f.name)
        for f in dataclasses.fields(TurnStats)
        if f.name not in ("finish_reason", "timings")
    }
    return TurnStats(
        **values,
        finish_reason=finish_reason_from_pb(msg.finish_reason),
        timings=_flat_from_pb(Timings, msg.timings),
    )


def turn_stats_to_pb(stats: TurnStats) -> pb.TurnStats:
    values = _flat_values(stats)
    values.update(
        finish_reason=finish_reason_to_pb(stats.finish_reason),
        timings=pb.Timings(**_flat_values(stats.timings)),
    )
    return pb.TurnStats(**values)


def event_from_pb(msg: pb.AskResponse) -> Event | None:
    """Converts one streamed event; ``None`` for an event kind this client does not know."""
    kind = msg.WhichOneof("event")
    if kind == "token":
        return Token(text=msg.token.text, token_id=msg.token.token_id, index=msg.token.index)
    if kind == "progress":
        p = msg.progress
        return Progress(stage=stage_from_pb(p.stage), fraction=p.fraction, seconds=p.seconds, detail=p.detail)
    if kind == "session":
        return SessionCreated(session=session_info_from_pb(msg.session.session))
    if kind == "stats":
        return turn_stats_from_pb(msg.stats)
    return None


def event_to_pb(event: Event) -> pb.AskResponse:
    """Converts one event to the message a server streams."""
    if isinstance(event, Token):
        return pb.AskResponse(token=pb.TokenDelta(**_flat_values(event)))
    if isinstance(event, Progress):
        return pb.AskResponse(
            progress=pb.Progress(
                stage=stage_to_pb(event.stage),  # type: ignore[arg-type]
                fraction=event.fraction,
                seconds=event.seconds,
                detail=event.detail,
            )
        )
    if isinstance(event, SessionCreated):
        return pb.AskResponse(session=pb.SessionCreated(session=session_info_to_pb(event.session)))
    if isinstance(event, TurnStats):
        return pb.AskResponse(stats=turn_stats_to_pb(event))
    raise TypeError(f"not an event: {event!r}")


# --------------------------------------------------------------------------------------------
# Deployment


def model_from_pb(msg: pb.ModelInfo) -> ModelInfo:
    return _flat_from_pb(ModelInfo, msg)


def model_to_pb(model: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(**_flat_values(model))


def method_from_pb(msg: pb.MethodInfo) -> MethodInfo:
    return MethodInfo(
        name=msg.name,
        description=msg.description,
        params=[_flat_from_pb(MethodParam, p) for p in msg.params],
        is_default=msg.is_default,
        progressive=msg.progressive,
    )


def method_to_pb(method: MethodInfo) -> pb.MethodInfo:
    return pb.MethodInfo(
        name=method.name,
        description=method.description,
        params=[pb.MethodParam(**_flat_values(p)) for p in method.params],
        is_default=method.is_default,
        progressive=method.progressive,
    )


def server_info_from_pb(msg: pb.ServerInfo) -> ServerInfo:
    return ServerInfo(
        version=msg.version,
        api_version=msg.api_version,
        limits=_flat_from_pb(Limits, msg.limits),
        default_model=msg.default_model,
        session_store=msg.session_store,
        runtime_versions=dict(msg.runtime_versions),
        workers=msg.workers,
    )


def server_info_to_pb(info: ServerInfo) -> pb.ServerInfo:
    values = _flat_values(info)
    values["limits"] = pb.Limits(**_flat_values(info.limits))
    return pb.ServerInfo(**values)
