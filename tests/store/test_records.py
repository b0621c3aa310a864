"""Encoding a session: bit-exact round trip, damage detection, versions, optional int8 storage."""

from __future__ import annotations

import pytest
import torch

from tests.pruning.conftest import media
from videoqa.worker.errors import CorruptSession, IncompatibleSession
from videoqa.worker.kvcache import serde
from videoqa.worker.kvcache.records import encode_delta, encode_prefix, restore
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.pruning.pipeline import PrunedPrefill
from videoqa.worker.pruning.registry import build_method
from videoqa.worker.sessions import MediaSegment, Session
from videoqa.worker.types import GenerationParams, MediaKind, PruningSpec, SamplingSpec


def make_session(lm, mass_bias: int = 1, spec: PruningSpec | None = None) -> tuple[Session, ModelRunner]:
    gen = ModelRunner(lm)
    method = build_method(spec or PruningSpec("das", {"bins_per_frame": 1, "mass_bias": mass_bias}, 0.3))
    pipeline = PrunedPrefill(gen, method, question_aware=True)
    clip = media()
    state, logits = pipeline.prefill(lm.adapter.prepare(clip, "what is in the video?"))
    result = pipeline.prune(state)
    session = Session(
        "s1",
        "tenant",
        lm.model_id,
        PruningSpec(method.name, dict(method.values), method.budget),
        [MediaSegment.of(clip, MediaKind.VIDEO, SamplingSpec(num_frames=8), pipeline.prompt.layout)],
        state,
        result.visual_kept,
        result.recycled,
        lm.kv_bytes_per_token,
    )
    session.mark_saved()
    LOGITS[id(session)] = logits
    return session, gen


#: The logits each test session's next answer starts from, by ``id(session)``.
LOGITS: dict[int, torch.Tensor] = {}


def answer(session: Session, gen: ModelRunner, tokens: int = 3) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    params = GenerationParams(max_new_tokens=tokens)
    list(gen.stream(session.state, LOGITS.pop(id(session)), params, on_logits=seen.append))
    return seen


def saved(session: Session) -> bytes:
    """The session's next delta record; the session is then as stored."""
    blob = encode_delta(session)
    session.records += 1
    session.mark_saved()
    return blob


def restored(lm, prefix: bytes, turns: list[bytes]) -> Session:
    return restore(prefix, turns, model_id=lm.model_id, revision=lm.revision, device=lm.device, dtype=lm.dtype)


def test_prefix_and_turns_round_trip_bit_exactly(tiny_model):
    lm = tiny_model("tiny-qwen2.5-vl")
    session, gen = make_session(lm)
    prefix = encode_prefix(session, lm.revision, "float32")
    answer(session, gen)
    session.turns = 1
    turn1 = saved(session)
    gen.feed(session.state, gen.turn_input(session.state, "and then?", first=False))
    session.turns = 2
    turn2 = saved(session)
    back = restored(lm, prefix, [turn1, turn2])
    assert back.turns == 2 and back.state.token_ids == session.state.token_ids
    assert (back.state.next_pos, back.state.rope_delta, back.state.pending_token) == (
        session.state.next_pos,
        session.state.rope_delta,
        session.state.pending_token,
    )
    for a, b in zip(back.state.cache.layers, session.state.cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert session.state.attention_bias and all(
        torch.equal(back.state.attention_bias[i], t) for i, t in session.state.attention_bias.items()
    )
    assert back.segments == session.segments and back.snapshot().frame_indices == session.snapshot().frame_indices
    # A follow-up on the restored session equals one on the live session.
    live = gen.feed(session.state, gen.turn_input(session.state, "what next?", first=False))
    again = gen.feed(back.state, gen.turn_input(back.state, "what next?", first=False))
    assert torch.equal(live, again)


def test_any_flipped_byte_or_truncation_is_detected(tiny_model):
    lm = tiny_model("tiny-qwen2-vl")
    session, _ = make_session(lm, mass_bias=0)
    blob = encode_prefix(session, lm.revision, "float32")
    positions = sorted({0, 5, 9, 11, 40, len(blob) // 3, len(blob) // 2, len(blob) - 100, len(blob) - 1})
    for position in positions:
        damaged = bytearray(blob)
        damaged[position] ^= 0x01
        with pytest.raises(CorruptSession):
            serde.decode(bytes(damaged))
    for cut in (0, 7, 30, len(blob) // 2, len(blob) - 1):
        with pytest.raises(CorruptSession):
            serde.decode(blob[:cut])


def test_other_format_version_and_other_revision_are_incompatible(tiny_model):
    lm = tiny_model("tiny-qwen2-vl")
    session, _ = make_session(lm, mass_bias=0)
    header, tensors = serde.decode(encode_prefix(session, lm.revision, "float32"))
    future = serde.encode(header, tensors).replace(b'"format_version":1', b'"format_version":2')
    with pytest.raises((IncompatibleSession, CorruptSession)):  # the checksum covers the version too
        serde.decode(future)
    header["format_version"] = 2
    raw = serde.encode(header, tensors)
    original = serde.FORMAT_VERSION
    try:
        serde.FORMAT_VERSION = 2  # a writer of a newer format...
        newer = serde.encode(header, tensors)
    finally:
        serde.FORMAT_VERSION = original
    with pytest.raises(IncompatibleSession):  # ...is refused by this reader, not misread
        serde.decode(newer)
    assert serde.decode(raw)[0]["format_version"] == 1
    prefix = encode_prefix(session, "another-revision", "float32")
    with pytest.raises(IncompatibleSession):
        restored(lm, prefix, [])


def test_int8_storage_error_is_small(tiny_model):
    lm = tiny_model("tiny-qwen2-vl")
    session, gen = make_session(lm, mass_bias=0)
    exact = restored(lm, encode_prefix(session, lm.revision, "float32"), [])
    small = encode_prefix(session, lm.revision, "float32", quantize="int8")
    lossy = restored(lm, small, [])
    assert len(small) < 0.4 * len(encode_prefix(session, lm.revision, "float32"))
    for a, b in zip(exact.state.cache.layers, lossy.state.cache.layers, strict=True):
        rel = (a.keys - b.keys).norm() / a.keys.norm()
        assert rel < 0.01, rel  # per-channel int8: under 1% relative error
    x = gen.feed(exact.state, gen.turn_input(exact.state, "and?", first=False))
    y = gen.feed(lossy.state, gen.turn_input(lossy.state, "and?", first=False))
    assert (x - y).abs().max() < 0.05 * x.abs().max()


#: hae with a recycle bin that moves entries within a few tokens on a tiny random model.
BUSY_HAE = PruningSpec("hae", {"interval": 2, "evict_below": 0.95, "restore_above": 1.05, "decay": 0.5}, 0.4)


def test_a_session_saved_mid_conversation_restores_its_recycle_bin(tiny_model):
    """hae moves entries while decoding: the turn records then hold whole caches and the bin, and
    the restored session (cache, bin, running scores) continues exactly as the live one."""
    lm = tiny_model("tiny-qwen2-vl")
    session, gen = make_session(lm, spec=BUSY_HAE)
    prefix = encode_prefix(session, lm.revision, "float32")
    turns = []
    for turn in (1, 2):
        if turn > 1:
            LOGITS[id(session)] = gen.feed(session.state, gen.turn_input(session.state, "and?", first=False))
        answer(session, gen, tokens=8)
        session.turns = turn
        turns.append(saved(session))
    live = session.state.extension
    assert live.moves["evicted"] > 0 and live.size > 0, "the bin holds entries when the session is saved"
    assert [serde.decode(t)[0]["base_lengths"] is None for t in turns] == [True, True], "whole-cache turns"
    back = restored(lm, prefix, turns)
    for a, b in zip(back.state.cache.layers, session.state.cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    mine = back.state.extension
    assert type(mine) is type(live) and mine.policy == live.policy and mine.moves == live.moves
    for name in ("scores", "visual", "bin_scores", "bin_since"):
        assert torch.equal(getattr(mine, name), getattr(live, name)), name
    for a, b in zip(mine.keys + mine.values, live.keys + live.values, strict=True):
        assert torch.equal(a, b)
    assert back.live_counts() == session.live_counts() and back.live_counts()[1] == live.size
    # The follow-up (bin still moving) equals the live one, logits and bin alike.
    for each in (session, back):
        LOGITS[id(each)] = gen.feed(each.state, gen.turn_input(each.state, "and then?", first=False))
    assert torch.equal(LOGITS[id(back)], LOGITS[id(session)])
    moves = dict(live.moves)
    live_seen, back_seen = answer(session, gen, tokens=8), answer(back, gen, tokens=8)
    assert all(torch.equal(a, b) for a, b in zip(live_seen, back_seen, strict=True))
    assert live.moves == mine.moves != moves, "entries moved during the follow-up too"


def test_retained_memory_is_stored_with_the_session(tiny_model):
    lm = tiny_model("tiny-llava-onevision")
    session, gen = make_session(lm, spec=PruningSpec("retentive_kv", {}, 0.3))
    prefix = encode_prefix(session, lm.revision, "float32")
    answer(session, gen)
    session.turns = 1
    turn = saved(session)
    back = restored(lm, prefix, [turn])
    live, mine = session.state.extension.layers, back.state.extension.layers
    assert set(mine) == set(live) == set(range(lm.num_layers))
    for i in live:
        for name in ("state", "normalizer", "gate"):
            assert torch.equal(getattr(mine[i], name), getattr(live[i], name)), (i, name)
    live_logits = gen.feed(session.state, gen.turn_input(session.state, "what next?", first=False))
    assert torch.equal(gen.feed(back.state, gen.turn_input(back.state, "what next?", first=False)), live_logits)
    plain = restored(lm, prefix, [turn])
    plain.state.extension = None  # the memory is what makes it equal
    assert not torch.equal(gen.feed(plain.state, gen.turn_input(plain.state, "what next?", first=False)), live_logits)
