"""Pure conversions between protobuf messages and the worker's domain dataclasses."""

from __future__ import annotations

from videoqa.v1 import videoqa_pb2 as pb
from videoqa.worker import types as t

_STAGES = {
    t.Stage.UPLOAD: pb.Progress.STAGE_UPLOAD,
    t.Stage.DECODE: pb.Progress.STAGE_DECODE,
    t.Stage.ENCODE: pb.Progress.STAGE_ENCODE,
    t.Stage.PREFILL: pb.Progress.STAGE_PREFILL,
    t.Stage.PRUNE: pb.Progress.STAGE_PRUNE,
    t.Stage.SAVE: pb.Progress.STAGE_SAVE,
}
_KINDS = {t.MediaKind.VIDEO: pb.MEDIA_KIND_VIDEO, t.MediaKind.IMAGES: pb.MEDIA_KIND_IMAGES}
_FINISH = {t.FinishReason.STOP: pb.FINISH_REASON_STOP, t.FinishReason.LENGTH: pb.FINISH_REASON_LENGTH}


def sampling_from_pb(msg: pb.FrameSampling) -> t.SamplingSpec:
    rate = msg.WhichOneof("rate")
    return t.SamplingSpec(
        num_frames=msg.num_frames if rate == "num_frames" else None,
        fps=msg.fps if rate == "fps" else None,
        max_frames=msg.max_frames,
        max_resolution=msg.max_resolution,
    )


def sampling_to_pb(spec: t.SamplingSpec) -> pb.FrameSampling:
    msg = pb.FrameSampling(max_frames=spec.max_frames, max_resolution=spec.max_resolution)
    if spec.num_frames is not None:
        msg.num_frames = spec.num_frames
    elif spec.fps is not None:
        msg.fps = spec.fps
    return msg


def pruning_from_pb(msg: pb.PruningSpec) -> t.PruningSpec:
    reduction = msg.reduction
    return t.PruningSpec(
        method=msg.method,
        params=dict(msg.params),
        budget=msg.budget,
        max_visual_tokens=msg.max_visual_tokens,
        reduction=t.ReductionSpec(reduction.method, dict(reduction.params), reduction.retention),
    )


def pruning_to_pb(spec: t.PruningSpec) -> pb.PruningSpec:
    msg = pb.PruningSpec(
        method=spec.method, params=spec.params, budget=spec.budget, max_visual_tokens=spec.max_visual_tokens
    )
    if spec.reduction.active:
        r = spec.reduction
        msg.reduction.CopyFrom(pb.ReductionSpec(method=r.method, params=r.params, retention=r.retention))
    return msg


def generation_from_pb(msg: pb.GenerationParams) -> t.GenerationParams:
    return t.GenerationParams(
        max_new_tokens=msg.max_new_tokens,
        temperature=msg.temperature,
        top_p=msg.top_p,
        seed=msg.seed if msg.HasField("seed") else None,
    )


def media_kind_from_pb(value: int) -> t.MediaKind | None:
    return {pb.MEDIA_KIND_VIDEO: t.MediaKind.VIDEO, pb.MEDIA_KIND_IMAGES: t.MediaKind.IMAGES}.get(value)


def session_to_pb(s: t.SessionSnapshot) -> pb.SessionInfo:
    return pb.SessionInfo(
        session_id=s.session_id,
        model=s.model,
        media_kind=_KINDS[s.media_kind],
        sampling=sampling_to_pb(s.sampling),
        frames=pb.SampledFrames(
            indices=s.frame_indices,
            timestamps=s.frame_timestamps,
            width=s.frame_width,
            height=s.frame_height,
            source_frames=s.source_frames,
            source_fps=s.source_fps,
            source_duration_seconds=s.source_duration_s,
        ),
        pruning=pruning_to_pb(s.pruning),
        turns=s.turns,
        context_length=s.context_length,
        cache_length=s.cache_length,
        visual_tokens_before=s.visual_tokens_before,
        visual_tokens_after=s.visual_tokens_after,
        visual_tokens_encoded=s.visual_tokens_encoded,
        kv_bytes=s.kv_bytes,
        created_at=s.created_at,
        last_used_at=s.last_used_at,
        segments=s.segments,
    )


def timings_to_pb(x: t.Timings) -> pb.Timings:
    return pb.Timings(
        upload_seconds=x.upload_s,
        decode_seconds=x.decode_s,
        encode_seconds=x.encode_s,
        prefill_seconds=x.prefill_s,
        prune_seconds=x.prune_s,
        save_seconds=x.save_s,
        time_to_first_token_seconds=x.ttft_s,
        generate_seconds=x.generate_s,
        total_seconds=x.total_s,
        queue_seconds=x.queue_s,
    )


def event_to_pb(event: t.Event) -> pb.AskResponse:
    if isinstance(event, t.ProgressEvent):
        return pb.AskResponse(
            progress=pb.Progress(
                stage=_STAGES[event.stage], fraction=event.fraction, seconds=event.seconds, detail=event.detail
            )
        )
    if isinstance(event, t.SessionEvent):
        return pb.AskResponse(session=pb.SessionCreated(session=session_to_pb(event.session)))
    if isinstance(event, t.TokenEvent):
        return pb.AskResponse(token=pb.TokenDelta(text=event.text, token_id=event.token_id, index=event.index))
    s = event.stats
    return pb.AskResponse(
        stats=pb.TurnStats(
            session_id=s.session_id,
            turn=s.turn,
            frames_used=s.frames_used,
            visual_tokens_before=s.visual_tokens_before,
            visual_tokens_after=s.visual_tokens_after,
            visual_tokens_encoded=s.visual_tokens_encoded,
            recycled_tokens=s.recycled_tokens,
            kv_bytes_before=s.kv_bytes_before,
            kv_bytes_after=s.kv_bytes_after,
            context_length=s.context_length,
            cache_length=s.cache_length,
            prompt_tokens=s.prompt_tokens,
            generated_tokens=s.generated_tokens,
            finish_reason=_FINISH[s.finish_reason],
            timings=timings_to_pb(s.timings),
            gpu_peak_bytes=s.gpu_peak_bytes,
            replayed=s.replayed,
        )
    )


def model_to_pb(m: t.ModelDescription) -> pb.ModelInfo:
    return pb.ModelInfo(
        id=m.id,
        family=m.family,
        is_default=m.is_default,
        revision=m.revision,
        dtype=m.dtype,
        kv_bytes_per_token=m.kv_bytes_per_token,
        attention_layers=m.attention_layers,
        linear_attention_layers=m.linear_attention_layers,
        linear_state_bytes=m.linear_state_bytes,
    )


def method_to_pb(m: t.MethodDescription) -> pb.MethodInfo:
    return pb.MethodInfo(
        name=m.name,
        description=m.description,
        is_default=m.is_default,
        progressive=m.progressive,
        params=[
            pb.MethodParam(
                name=p.name, description=p.description, default=p.default, min=p.min, max=p.max, integer=p.integer
            )
            for p in m.params
        ],
    )


def limits_to_pb(x: t.Limits) -> pb.Limits:
    return pb.Limits(
        max_upload_bytes=x.max_upload_bytes,
        max_frames=x.max_frames,
        max_images=x.max_images,
        max_resolution=x.max_resolution,
        max_question_chars=x.max_question_chars,
        max_new_tokens=x.max_new_tokens,
        default_frames=x.default_frames,
        default_max_new_tokens=x.default_max_new_tokens,
        max_session_frames=x.max_session_frames,
        prefill_chunk_frames=x.prefill_chunk_frames,
    )
