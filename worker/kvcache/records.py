"""A session as stored: an immutable *prefix* (the compressed video context) plus one *turn delta*
per completed turn (the question and answer entries appended to every layer).

Turns usually only append to the end of each layer's cache, so a delta is each layer's slice from
the length it had at the previous save; a follow-up rewrites nothing of the video part. Restoring
is the prefix with the deltas concatenated in order. A pruning method's cache extension (see
``pruning.extension``) travels in the prefix, and in every turn when it changes while decoding;
a turn during which entries moved (``hae``'s recycle bin) stores each layer's whole cache instead
of a delta (``base_lengths`` null), and restoring starts over from it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from videoqa.worker.errors import CorruptSession, IncompatibleSession
from videoqa.worker.kvcache.serde import decode, dequantize_int8, encode, quantize_int8
from videoqa.worker.model.families import TokenLayout
from videoqa.worker.model.state import ConversationState
from videoqa.worker.pruning.extension import restore_extension
from videoqa.worker.sessions import Session
from videoqa.worker.types import DecodedMedia, MediaKind, PruningSpec, SamplingSpec


def _pack(tensors: dict[str, torch.Tensor], name: str, x: torch.Tensor, quantize: str) -> None:
    if quantize == "int8":
        q, scale = quantize_int8(x)
        tensors[f"{name}.q"], tensors[f"{name}.scale"] = q, scale
    else:
        tensors[name] = x


def _unpack(tensors: dict[str, torch.Tensor], name: str, dtype: torch.dtype) -> torch.Tensor:
    if f"{name}.q" in tensors:
        return dequantize_int8(tensors[f"{name}.q"], tensors[f"{name}.scale"], dtype)
    if name not in tensors:
        raise CorruptSession(f"stored session is missing tensor {name}")
    return tensors[name]


def _with_extension(state: ConversationState, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Add the cache extension's record (``ext.``-prefixed tensors) to a record being built."""
    if state.extension is not None:
        ext_header, ext_tensors = state.extension.to_record()
        header["extension"] = ext_header
        tensors.update({f"ext.{name}": t for name, t in ext_tensors.items()})


def _extension_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name.removeprefix("ext."): t for name, t in tensors.items() if name.startswith("ext.")}


def encode_prefix(session: Session, revision: str, dtype: str, quantize: str = "none") -> bytes:
    """The session as created: compressed cache, positions, layout, and what the API echoes."""
    state, media, layout = session.state, session.media, session.layout
    tensors: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(state.cache.layers):
        _pack(tensors, f"k.{i}", layer.keys, quantize)
        _pack(tensors, f"v.{i}", layer.values, quantize)
    for i, bias in state.attention_bias.items():
        tensors[f"bias.{i}"] = bias
    header = {
        "kind": "prefix",
        "session_id": session.session_id,
        "tenant": session.tenant,
        "model_id": session.model_id,
        "revision": revision,
        "dtype": dtype,
        "quantize": quantize,
        "created_at": session.created_at,
        "written_at": time.time(),
        "media_kind": session.media_kind.value,
        "sampling": vars(session.sampling),
        "pruning": {
            "method": session.pruning.method,
            "params": session.pruning.params,
            "budget": session.pruning.budget,
        },
        "frames": {
            "indices": list(media.indices),
            "timestamps": list(media.timestamps),
            "height": int(media.frames.shape[1]) if media.frames.ndim == 4 else 0,
            "width": int(media.frames.shape[2]) if media.frames.ndim == 4 else 0,
            "source_frames": media.source_frames,
            "source_fps": media.source_fps,
            "duration_s": media.duration_s,
        },
        "layout": {
            "prompt_length": layout.prompt_length,
            "visual_start": layout.visual_start,
            "visual_end": layout.visual_end,
            "frame_spans": [list(span) for span in layout.frame_spans],
            "frames_per_span": layout.frames_per_span,
        },
        "visual_tokens_after": session.visual_tokens_after,
        "recycled_tokens": session.recycled_tokens,
        "kv_bytes_per_token": session.kv_bytes_per_token,
        "rope_delta": state.rope_delta,
        "next_pos": state.next_pos,
        "token_ids": list(state.token_ids),
        "pending_token": state.pending_token,
        "awaiting_question": bool(session.extra.get("awaiting_question", False)),
        "layers": [list(layer.keys.shape[1:]) for layer in state.cache.layers],
    }
    _with_extension(state, header, tensors)
    return encode(header, tensors)


def encode_turn(session: Session, since: tuple[tuple[int, ...], int], quantize: str = "none") -> bytes:
    """Turn ``session.turns``: each layer's entries after ``since`` (lengths, token count), or its
    whole cache when the cache extension moved entries since then."""
    lengths, n_tokens = since
    state = session.state
    extension = state.extension
    whole = extension is not None and extension.rewritten
    tensors: dict[str, torch.Tensor] = {}
    for i, (layer, start) in enumerate(zip(state.cache.layers, lengths, strict=True)):
        start = 0 if whole else start
        _pack(tensors, f"k.{i}", layer.keys[:, :, start:], quantize)
        _pack(tensors, f"v.{i}", layer.values[:, :, start:], quantize)
    header = {
        "kind": "turn",
        "session_id": session.session_id,
        "turn": session.turns,
        "base_lengths": None if whole else list(lengths),
        "next_pos": state.next_pos,
        "token_ids": list(state.token_ids[n_tokens:]),
        "pending_token": state.pending_token,
        "written_at": time.time(),
    }
    if extension is not None and extension.mutable:
        _with_extension(state, header, tensors)
    return encode(header, tensors)


def restore(
    prefix: bytes, turns: list[bytes], *, model_id: str, revision: str, device: torch.device, dtype: torch.dtype
) -> Session:
    """Rebuild a live session from its stored records, checking it belongs to this model."""
    head, tensors = decode(prefix)
    if head.get("kind") != "prefix":
        raise CorruptSession("stored session's first record is not a prefix")
    if head["model_id"] != model_id or head["revision"] != revision:
        raise IncompatibleSession(
            f"session was built by {head['model_id']} (revision {head['revision']}); "
            f"this worker serves {model_id} (revision {revision})"
        )
    layers = len(head["layers"])
    keys = [_unpack(tensors, f"k.{i}", dtype) for i in range(layers)]
    values = [_unpack(tensors, f"v.{i}", dtype) for i in range(layers)]
    token_ids, next_pos, pending = list(head["token_ids"]), head["next_pos"], head["pending_token"]
    extension = (head.get("extension"), _extension_tensors(tensors))
    for expected, blob in enumerate(turns, start=1):
        turn, parts = decode(blob)
        if turn.get("kind") != "turn" or turn.get("turn") != expected or turn.get("session_id") != head["session_id"]:
            raise CorruptSession(f"stored turn {expected} does not belong to this session")
        stored_k = [_unpack(parts, f"k.{i}", dtype) for i in range(layers)]
        stored_v = [_unpack(parts, f"v.{i}", dtype) for i in range(layers)]
        if turn["base_lengths"] is None:  # the whole cache: entries moved during that turn
            keys, values = stored_k, stored_v
        elif turn["base_lengths"] != [int(k.shape[2]) for k in keys]:
            raise CorruptSession(f"stored turn {expected} does not continue the stored cache")
        else:
            keys = [torch.cat([k, new], dim=2) for k, new in zip(keys, stored_k, strict=True)]
            values = [torch.cat([v, new], dim=2) for v, new in zip(values, stored_v, strict=True)]
        token_ids += turn["token_ids"]
        next_pos, pending = turn["next_pos"], turn["pending_token"]
        if "extension" in turn:
            extension = (turn["extension"], _extension_tensors(parts))
    cache = DynamicCache([(k.to(device), v.to(device)) for k, v in zip(keys, values, strict=True)])
    bias = {int(name.split(".")[1]): t.to(device) for name, t in tensors.items() if name.startswith("bias.")}
    state = ConversationState(cache, next_pos, head["rope_delta"], token_ids, pending, bias)
    state.extension = restore_extension(*extension, device)
    frames, layout = head["frames"], head["layout"]
    session = Session(
        session_id=head["session_id"],
        tenant=head["tenant"],
        model_id=head["model_id"],
        media_kind=MediaKind(head["media_kind"]),
        sampling=SamplingSpec(**head["sampling"]),
        pruning=PruningSpec(**head["pruning"]),
        media=DecodedMedia(
            frames=np.zeros((0, frames["height"], frames["width"], 3), dtype=np.uint8),
            indices=frames["indices"],
            timestamps=frames["timestamps"],
            source_frames=frames["source_frames"],
            source_fps=frames["source_fps"],
            duration_s=frames["duration_s"],
        ),
        layout=TokenLayout(
            layout["prompt_length"],
            layout["visual_start"],
            layout["visual_end"],
            [tuple(span) for span in layout["frame_spans"]],
            layout["frames_per_span"],
        ),
        state=state,
        visual_tokens_after=head["visual_tokens_after"],
        recycled_tokens=head["recycled_tokens"],
        kv_bytes_per_token=head["kv_bytes_per_token"],
        turns=len(turns),
        created_at=head["created_at"],
    )
    session.extra["awaiting_question"] = head["awaiting_question"] and not turns
    session.mark_saved()
    return session


def header_of(blob: bytes) -> dict[str, Any]:
    """The verified header of a record (used to check ownership without building tensors)."""
    return decode(blob)[0]
