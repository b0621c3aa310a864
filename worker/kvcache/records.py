"""A session as stored: an immutable *prefix* (the compressed video context) plus one *delta*
record per completed turn and per appended media segment.

A turn usually only appends to the end of each layer's cache, so its delta is each layer's slice
from the length it had at the previous save. Media appended to a session is compressed together
with what the cache already held, so its delta may also drop stored entries: per layer and KV head
a keep mask over the stored entries (the survivors keep their order), then the new entries, the
session's slot map (which entries are visual, of which frame) and recycled-entry biases with them.
The stored prefix is never rewritten. A turn during which a cache extension moved entries
(``hae``'s recycle bin) stores each layer's whole cache instead (``base_lengths`` null), and
restoring starts over from it. A pruning method's cache extension travels in the prefix, and in
every record when it changes while decoding.

A hybrid model's session (Qwen3.5) also has linear-attention states: fixed-size tensors that every
token changes, so each record holds them whole (``lin.``-prefixed tensors, never quantized: the
recurrent state is float32 and a turn builds on it exactly), and restoring takes the last record's.
The header says which of the model's layers they belong to (``linear``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import DynamicCache

from videoqa.worker.errors import CorruptSession, IncompatibleSession
from videoqa.worker.kvcache.serde import decode, dequantize_int8, encode, quantize_int8
from videoqa.worker.model.recurrent import LayerKinds, LinearStates
from videoqa.worker.model.state import TEXT, ConversationState, LayerSlots, VisualSlots
from videoqa.worker.pruning.extension import restore_extension
from videoqa.worker.sessions import MediaSegment, Session
from videoqa.worker.types import MediaKind, PruningSpec, ReductionSpec, SamplingSpec


def _pack(tensors: dict[str, torch.Tensor], name: str, x: torch.Tensor, quantize: str) -> None:
    if quantize == "int8" and x.is_floating_point() and x.numel():
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


def _with_linear(state: ConversationState, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Add a hybrid model's linear-attention states (``lin.``-prefixed tensors) to a record."""
    linear = state.linear
    if linear is not None:
        header["linear"] = list(linear.kinds.linear)
        tensors.update({f"lin.{name}": t for name, t in linear.to_tensors().items()})


def _linear_of(header: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device) -> LinearStates | None:
    """The linear-attention states a record holds (``None``: it holds none)."""
    kinds = header.get("linear")
    if kinds is None:
        return None
    if not isinstance(kinds, list) or not all(isinstance(k, bool) for k in kinds) or not any(kinds):
        raise CorruptSession("stored linear-attention layout is malformed")
    parts = {name.removeprefix("lin."): t for name, t in tensors.items() if name.startswith("lin.")}
    try:
        return LinearStates.from_tensors(LayerKinds(tuple(kinds)), parts, device)
    except (KeyError, ValueError, RuntimeError) as error:
        raise CorruptSession(f"stored linear-attention state is malformed ({error})") from None


def _extension_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name.removeprefix("ext."): t for name, t in tensors.items() if name.startswith("ext.")}


def _segment_record(segment: MediaSegment) -> dict[str, Any]:
    return {
        "kind": segment.kind.value,
        "sampling": vars(segment.sampling),
        "indices": list(segment.frame_indices),
        "timestamps": list(segment.timestamps),
        "width": segment.width,
        "height": segment.height,
        "source_frames": segment.source_frames,
        "source_fps": segment.source_fps,
        "duration_s": segment.duration_s,
        "start_s": segment.start_s,
        "visual_tokens": segment.visual_tokens,
        "spans": segment.spans,
        "encoded_tokens": segment.encoded_tokens,
    }


def _segment_of(record: dict[str, Any]) -> MediaSegment:
    try:
        return MediaSegment(
            kind=MediaKind(record["kind"]),
            sampling=SamplingSpec(**record["sampling"]),
            frame_indices=tuple(record["indices"]),
            timestamps=tuple(record["timestamps"]),
            width=int(record["width"]),
            height=int(record["height"]),
            source_frames=int(record["source_frames"]),
            source_fps=float(record["source_fps"]),
            duration_s=float(record["duration_s"]),
            start_s=float(record["start_s"]),
            visual_tokens=int(record["visual_tokens"]),
            spans=int(record["spans"]),
            encoded_tokens=int(record.get("encoded_tokens", 0)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptSession(f"stored media segment is malformed ({error})") from None


def _reduction_of(record: dict[str, Any] | None) -> ReductionSpec:
    """A stored reduction (records written before reductions existed have none)."""
    if record is None:
        return ReductionSpec()
    try:
        params = {str(k): float(v) for k, v in dict(record["params"]).items()}
        return ReductionSpec(str(record["method"]), params, float(record["retention"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptSession(f"stored reduction is malformed ({error})") from None


def _legacy_segment(head: dict[str, Any]) -> MediaSegment:
    """The one segment of a prefix written before sessions could grow (``frames`` + ``layout``)."""
    frames, layout = head["frames"], head["layout"]
    spans = layout["frame_spans"]
    return MediaSegment(
        kind=MediaKind(head["media_kind"]),
        sampling=SamplingSpec(**head["sampling"]),
        frame_indices=tuple(frames["indices"]),
        timestamps=tuple(frames["timestamps"]),
        width=int(frames["width"]),
        height=int(frames["height"]),
        source_frames=int(frames["source_frames"]),
        source_fps=float(frames["source_fps"]),
        duration_s=float(frames["duration_s"]),
        start_s=0.0,
        visual_tokens=sum(end - start for start, end in spans),
        spans=len(spans),
    )


def _pack_slots(tensors: dict[str, torch.Tensor], prefix: str, slots: LayerSlots) -> None:
    """A layer's slot map, its visual columns only (everything else is text): ``cols`` [n] and
    per KV head [H_kv, n] each field but ``origin`` (where an entry was stored is the reader's own
    bookkeeping)."""
    columns = (slots.kind != TEXT).any(dim=0).nonzero().flatten()
    tensors[f"{prefix}.cols"] = columns.to(torch.int32)
    for name, t in zip(LayerSlots.names(), slots.tensors(), strict=True):
        if name != "origin":
            tensors[f"{prefix}.{name}"] = t[:, columns].contiguous()


def _unpack_slots(tensors: dict[str, torch.Tensor], prefix: str, heads: int, length: int) -> LayerSlots:
    """The slot map :func:`_pack_slots` stored, for a layer of ``length`` entries."""
    try:
        columns = tensors[f"{prefix}.cols"].long()
        stored = {name: tensors[f"{prefix}.{name}"] for name in LayerSlots.names() if name != "origin"}
    except KeyError as missing:
        raise CorruptSession(f"stored session is missing its slot map ({missing})") from None
    if columns.numel() and (int(columns.max()) >= length or int(columns.min()) < 0):
        raise CorruptSession("stored slot map does not fit its cache")
    layer = LayerSlots.text(heads, length)
    for name, values in stored.items():
        if values.shape != (heads, columns.numel()):
            raise CorruptSession("stored slot map does not fit its cache")
        getattr(layer, name)[:, columns] = values.to(getattr(layer, name).dtype)
    return layer


def encode_prefix(session: Session, revision: str, dtype: str, quantize: str = "none") -> bytes:
    """The session as created: compressed cache, positions, media, and what the API echoes."""
    state = session.state
    tensors: dict[str, torch.Tensor] = {}
    lengths = state.cache_lengths
    for i, layer in enumerate(state.cache.layers):
        _pack(tensors, f"k.{i}", layer.keys, quantize)
        _pack(tensors, f"v.{i}", layer.values, quantize)
    for i, bias in state.attention_bias.items():
        tensors[f"bias.{i}"] = bias
    if state.slots is not None:
        for i, length in enumerate(lengths):
            _pack_slots(tensors, f"slots.{i}", state.slots.layer(i, length))
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
        "pruning": {
            "method": session.pruning.method,
            "params": session.pruning.params,
            "budget": session.pruning.budget,
            "max_visual_tokens": session.pruning.max_visual_tokens,
            "reduction": {
                "method": session.pruning.reduction.method,
                "params": session.pruning.reduction.params,
                "retention": session.pruning.reduction.retention,
            },
        },
        "segments": [_segment_record(segment) for segment in session.segments],
        "visual_tokens_after": session.visual_tokens_after,
        "recycled_tokens": session.recycled_tokens,
        "kv_bytes_per_token": session.kv_bytes_per_token,
        "rope_delta": state.rope_delta,
        "next_pos": state.next_pos,
        "token_ids": list(state.token_ids),
        "pending_token": state.pending_token,
        "awaiting_question": session.awaiting_question,
        "slots": state.slots is not None,
        "layers": [list(layer.keys.shape[1:]) for layer in state.cache.layers],
    }
    _with_extension(state, header, tensors)
    _with_linear(state, header, tensors)
    return encode(header, tensors)


def _survivors(slots: LayerSlots, stored: int) -> tuple[torch.Tensor, list[int]] | None:
    """Per head, which of the ``stored`` entries of the last save are still there (keep mask
    [H_kv, stored]) and how many entries follow them; ``None`` when the cache is not "the
    survivors in their stored order, then new entries" (then the record holds the whole cache)."""
    origin = slots.origin.long()
    heads = origin.shape[0]
    keep = torch.zeros(heads, stored, dtype=torch.bool)
    tails = []
    for h in range(heads):
        row = origin[h]
        old = int((row >= 0).sum())
        if old and (bool((row[:old] < 0).any()) or bool((row[old:] >= 0).any())):
            return None  # stored entries are not all first
        first = row[:old]
        if old > 1 and not bool((first[1:] > first[:-1]).all()):
            return None  # reordered
        if old and int(first.max()) >= stored:
            return None
        keep[h, first] = True
        tails.append(int(row.numel()) - old)
    return keep, tails


def encode_delta(session: Session, quantize: str = "none", segment: MediaSegment | None = None) -> bytes:
    """The record of what changed since the last save (``session.saved``): a completed turn, or a
    media ``segment`` appended to the session (see the module docstring)."""
    since = session.saved
    state = session.state
    extension = state.extension
    lengths = state.cache_lengths
    maps = [state.slots.layer(i, n) for i, n in enumerate(lengths)] if state.slots is not None else None
    plans: list[tuple[torch.Tensor, int] | None] = [None] * len(lengths)
    whole = extension is not None and extension.rewritten
    if maps is not None and not whole:
        for i, (layer_map, stored) in enumerate(zip(maps, since.lengths, strict=True)):
            found = _survivors(layer_map, stored)
            if found is None or len(set(found[1])) != 1:
                whole = True  # not "survivors in stored order, then as many new entries per head"
                break
            keep, tails = found
            plans[i] = (keep, lengths[i] - tails[0])
    tensors: dict[str, torch.Tensor] = {}
    dropped = False
    for i, layer in enumerate(state.cache.layers):
        begin = 0 if whole else since.lengths[i]
        if not whole and plans[i] is not None and not bool(plans[i][0].all()):
            keep, begin = plans[i]
            tensors[f"keep.{i}"] = keep.to(torch.uint8)
            dropped = True
        _pack(tensors, f"k.{i}", layer.keys[:, :, begin:], quantize)
        _pack(tensors, f"v.{i}", layer.values[:, :, begin:], quantize)
        if maps is not None:
            tail = maps[i].tail(begin)
            if whole or bool((tail.kind != TEXT).any()):
                _pack_slots(tensors, f"slots.{i}", tail)
    replaces_bias = whole or dropped or segment is not None
    if replaces_bias:
        for i, bias in state.attention_bias.items():
            tensors[f"bias.{i}"] = bias
    header = {
        "kind": "turn" if segment is None else "segment",
        "session_id": session.session_id,
        "record": session.records + 1,
        "turn": session.turns,
        "base_lengths": None if whole else list(since.lengths),
        "replaces_bias": replaces_bias,
        "next_pos": state.next_pos,
        "rope_delta": state.rope_delta,
        "token_ids": list(state.token_ids[since.tokens :]),
        "pending_token": state.pending_token,
        "awaiting_question": session.awaiting_question,
        "visual_tokens_after": session.visual_tokens_after,
        "recycled_tokens": session.recycled_tokens,
        "written_at": time.time(),
    }
    if segment is not None:
        header["segment"] = _segment_record(segment)
    if extension is not None and extension.mutable:
        _with_extension(state, header, tensors)
    _with_linear(state, header, tensors)
    return encode(header, tensors)


def restore(
    prefix: bytes, records: list[bytes], *, model_id: str, revision: str, device: torch.device, dtype: torch.dtype
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
    heads = int(head["layers"][0][0]) if layers else 0
    slots = None
    if head.get("slots"):
        slots = [_unpack_slots(tensors, f"slots.{i}", heads, int(keys[i].shape[2])) for i in range(layers)]
    bias = {int(name.split(".")[1]): t for name, t in tensors.items() if name.startswith("bias.")}
    token_ids, next_pos, pending = list(head["token_ids"]), head["next_pos"], head["pending_token"]
    rope_delta = head["rope_delta"]
    segments = [_segment_of(s) for s in head["segments"]] if "segments" in head else [_legacy_segment(head)]
    progress = {
        "turns": 0,
        "awaiting_question": bool(head["awaiting_question"]),
        "visual_tokens_after": head["visual_tokens_after"],
        "recycled_tokens": head["recycled_tokens"],
    }
    extension = (head.get("extension"), _extension_tensors(tensors))
    linear = _linear_of(head, tensors, device)
    for expected, blob in enumerate(records, start=1):
        delta, parts = decode(blob)
        number = delta.get("record", delta.get("turn"))  # (records written before appends: by turn)
        if delta.get("kind") not in ("turn", "segment") or number != expected:
            raise CorruptSession(f"stored record {expected} does not belong to this session")
        if delta.get("session_id") != head["session_id"]:
            raise CorruptSession(f"stored record {expected} does not belong to this session")
        keys, values, slots = _apply_delta(delta, parts, keys, values, slots, dtype, expected)
        if delta.get("replaces_bias"):
            bias = {int(name.split(".")[1]): t for name, t in parts.items() if name.startswith("bias.")}
        token_ids += delta["token_ids"]
        next_pos, pending = delta["next_pos"], delta["pending_token"]
        rope_delta = delta.get("rope_delta", rope_delta)
        progress["turns"] = delta["turn"]
        for key in ("awaiting_question", "visual_tokens_after", "recycled_tokens"):
            if key in delta:
                progress[key] = delta[key]
        if delta["kind"] == "segment":
            segments.append(_segment_of(delta["segment"]))
        elif "awaiting_question" not in delta:
            progress["awaiting_question"] = False
        if "extension" in delta:
            extension = (delta["extension"], _extension_tensors(parts))
        if linear is not None:
            linear = _linear_of(delta, parts, device)
            if linear is None:
                raise CorruptSession(f"stored record {expected} lacks the session's linear-attention state")
    cache = DynamicCache([(k.to(device), v.to(device)) for k, v in zip(keys, values, strict=True)])
    state = ConversationState(
        cache,
        next_pos,
        rope_delta,
        token_ids,
        pending,
        {i: t.to(device) for i, t in bias.items()},
        slots=VisualSlots(slots) if slots is not None else None,
        linear=linear,
    )
    state.extension = restore_extension(*extension, device)
    pruning = head["pruning"]
    session = Session(
        session_id=head["session_id"],
        tenant=head["tenant"],
        model_id=head["model_id"],
        pruning=PruningSpec(
            pruning["method"],
            pruning["params"],
            pruning["budget"],
            int(pruning.get("max_visual_tokens", 0)),
            _reduction_of(pruning.get("reduction")),
        ),
        segments=segments,
        state=state,
        visual_tokens_after=progress["visual_tokens_after"],
        recycled_tokens=progress["recycled_tokens"],
        kv_bytes_per_token=head["kv_bytes_per_token"],
        turns=progress["turns"],
        records=len(records),
        awaiting_question=progress["awaiting_question"],
        created_at=head["created_at"],
    )
    session.mark_saved()
    return session


def _apply_delta(delta, parts, keys, values, slots, dtype, number: int):
    """Each layer's cache (and slot map) after one delta record."""
    layers = len(keys)
    stored_k = [_unpack(parts, f"k.{i}", dtype) for i in range(layers)]
    stored_v = [_unpack(parts, f"v.{i}", dtype) for i in range(layers)]
    new_slots = None
    if slots is not None:
        new_slots = [
            _unpack_slots(parts, f"slots.{i}", k.shape[1], k.shape[2]) if f"slots.{i}.cols" in parts else None
            for i, k in enumerate(stored_k)
        ]
    if delta["base_lengths"] is None:  # the whole cache: entries moved during that turn
        if slots is not None:
            slots = [
                s if s is not None else LayerSlots.text(k.shape[1], k.shape[2])
                for s, k in zip(new_slots, stored_k, strict=True)
            ]
        return stored_k, stored_v, slots
    if delta["base_lengths"] != [int(k.shape[2]) for k in keys]:
        raise CorruptSession(f"stored record {number} does not continue the stored cache")
    out_k, out_v, out_s = [], [], []
    for i in range(layers):
        k, v = keys[i], values[i]
        layer_slots = slots[i].extended(int(k.shape[2])) if slots is not None else None
        if f"keep.{i}" in parts:
            keep = parts[f"keep.{i}"].bool()
            if keep.shape != (k.shape[1], k.shape[2]) or len(set(keep.sum(dim=1).tolist())) != 1:
                raise CorruptSession(f"stored record {number} has a malformed keep mask")
            index = torch.stack([row.nonzero().flatten() for row in keep])  # [H_kv, kept]
            k = torch.gather(k, 2, index[None, :, :, None].expand(1, -1, -1, k.shape[3]))
            v = torch.gather(v, 2, index[None, :, :, None].expand(1, -1, -1, v.shape[3]))
            if layer_slots is not None:
                layer_slots = layer_slots.gathered(index)
        out_k.append(torch.cat([k, stored_k[i]], dim=2))
        out_v.append(torch.cat([v, stored_v[i]], dim=2))
        if layer_slots is not None:
            tail = new_slots[i] if new_slots[i] is not None else LayerSlots.text(k.shape[1], stored_k[i].shape[2])
            out_s.append(
                LayerSlots(
                    *(torch.cat([a, b], dim=1) for a, b in zip(layer_slots.tensors(), tail.tensors(), strict=True))
                )
            )
    return out_k, out_v, (out_s if slots is not None else None)


def header_of(blob: bytes) -> dict[str, Any]:
    """The verified header of a record (used to check ownership without building tensors)."""
    return decode(blob)[0]
