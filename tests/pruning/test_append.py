"""Media appended to a conversation: one prompt's positions, stored deltas, and clean cancellation."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import FAMILIES
from tests.pruning.conftest import media
from tests.pruning.conversation import GREEDY, Conversation, one_prompt
from videoqa.worker.kvcache.records import encode_delta, encode_prefix, restore
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.types import PruningSpec


@pytest.mark.parametrize("after_answer", [True, False], ids=["after-answer", "before-any-question"])
@pytest.mark.parametrize("model_id", FAMILIES)
def test_appending_media_then_asking_equals_one_prompt(tiny_model, model_id, after_answer):
    """At keep-all, a conversation grown by an appended clip (prefilled in chunks after it) and
    then asked about answers as one prompt holding the whole conversation: same greedy tokens,
    logits within 1e-4."""
    lm = tiny_model(model_id)
    talk = Conversation(lm, PruningSpec("full"), "what is in the video?" if after_answer else None)
    if after_answer:
        talk.answer()
    talk.append()
    talk.ask("and what happens next?")
    before_answer = list(talk.state.token_ids)
    tokens, seen = talk.answer()

    ref_state, ref_logits = one_prompt(lm, talk.clips, before_answer)
    ref_seen: list[torch.Tensor] = []
    ref_tokens = list(ModelRunner(lm).stream(ref_state, ref_logits, GREEDY, on_logits=ref_seen.append))
    assert tokens == ref_tokens
    for mine, theirs in zip(seen, ref_seen, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-4)
    assert talk.state.next_pos == ref_state.next_pos - len(ref_tokens) + 1 + len(tokens) - 1
    assert talk.state.rope_delta == ref_state.rope_delta


@pytest.mark.parametrize(
    ("model_id", "per_head"), [(m, 0) for m in FAMILIES] + [("tiny-qwen2.5-vl", 1)], ids=lambda x: str(x)
)
def test_appended_media_with_compression_reloads_as_live(tiny_model, model_id, per_head):
    """A session whose appended clip was compressed together with what it held (stored entries
    dropped, recycled entries folded again) is stored as prefix + deltas that restore it bit for
    bit: cache, slot map, biases, positions; its next answer equals the live one. One kept set for
    all heads drops stored entries by keep masks; a kept set per head may keep unequal numbers of
    stored entries per head, and then stores the whole cache."""
    from videoqa.worker.kvcache import serde

    lm = tiny_model(model_id)
    spec = PruningSpec("das", {"bins_per_frame": 1, "mass_bias": 1, "per_head": per_head}, 0.3)
    talk = Conversation(lm, spec, "what is in the video?")
    session = talk.session
    prefix = encode_prefix(session, lm.revision, "float32")
    records = []

    def save(segment=None):
        records.append(encode_delta(session, segment=segment))
        session.records += 1
        session.mark_saved()

    talk.answer()
    save()
    for seed in (1, 2):
        segment, out = talk.append(seed=seed)
        save(segment)
        assert out.result.visual_kept == round(0.3 * session.visual_tokens_before)
    if not per_head:
        dropping = [any(name.startswith("keep.") for name in serde.decode(r)[1]) for r in records]
        assert dropping == [False, True, True], "the appends drop stored entries by keep masks"
    back = restore(prefix, records, model_id=lm.model_id, revision=lm.revision, device=lm.device, dtype=lm.dtype)
    assert back.segments == session.segments and back.records == 3 and back.turns == 1
    assert back.awaiting_question and back.visual_tokens_after == session.visual_tokens_after
    live, mine = session.state, back.state
    assert (mine.next_pos, mine.rope_delta, mine.token_ids) == (live.next_pos, live.rope_delta, live.token_ids)
    for a, b in zip(mine.cache.layers, live.cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert set(mine.attention_bias) == set(live.attention_bias) and mine.attention_bias
    for i, bias in live.attention_bias.items():
        assert torch.equal(mine.attention_bias[i], bias)
    for a, b in zip(mine.slots.layers, live.slots.layers, strict=True):
        for name, x, y in zip(("kind", "frame", "order", "count", "weight"), a.tensors(), b.tensors(), strict=False):
            visual = b.kind != 0
            assert torch.equal(x[visual], y[visual]), name
    timestamps = back.snapshot().frame_timestamps
    assert timestamps == sorted(timestamps) and len(timestamps) == 3 * 8, "one clock across segments"
    question = "and at the end?"
    for each in (live, mine):
        ids = talk.runner.turn_input(each, question, first=True)
        talk.logits = talk.runner.feed(each, ids)
        seen: list[torch.Tensor] = []
        list(talk.runner.stream(each, talk.logits, GREEDY, on_logits=seen.append))
        each.seen = seen  # type: ignore[attr-defined]
    assert all(torch.equal(a, b) for a, b in zip(live.seen, mine.seen, strict=True))


def test_a_cancelled_append_leaves_the_session_as_it_was(tiny_model):
    lm = tiny_model("tiny-qwen2-vl")
    talk = Conversation(lm, PruningSpec("snapkv", {}, 0.3, max_visual_tokens=30), "what is in the video?")
    talk.answer()
    state = talk.state
    before = copy.deepcopy(state)
    checkpoint = state.checkpoint(rewrites=True)
    _, _, steps = talk.append_steps(frames=16)
    next(steps)
    next(steps)  # two chunks in, compressed with what the session held
    assert state.cache_lengths != before.cache_lengths or state.next_pos != before.next_pos
    steps.close()
    state.rollback(checkpoint)
    assert (state.next_pos, state.rope_delta, state.token_ids, state.pending_token) == (
        before.next_pos,
        before.rope_delta,
        before.token_ids,
        before.pending_token,
    )
    for a, b in zip(state.cache.layers, before.cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    for a, b in zip(state.slots.layers, before.slots.layers, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors(), strict=True))
    assert state.attention_bias.keys() == before.attention_bias.keys()


def test_a_capped_session_stays_bounded_however_much_is_appended(tiny_model):
    lm = tiny_model("tiny-llava-onevision")
    talk = Conversation(lm, PruningSpec("das", {}, 1.0, max_visual_tokens=40), None)
    peaks = []
    for seed in range(1, 5):
        _, out = talk.append(seed=seed)
        peaks.append(out.peak_kv_bytes)
        assert out.result.visual_kept == 40
    text_per_append = 4 * lm.kv_bytes_per_token  # each segment's own few text tokens stay
    assert peaks[-1] - peaks[0] <= 3 * text_per_append, "the peak does not grow with the media held"
    assert talk.session.visual_tokens_before > 4 * 40


@pytest.mark.parametrize("model_id", ["tiny-qwen2-vl", "tiny-qwen3-vl", "tiny-qwen3.5"])
def test_appended_media_under_a_reduction_continues_the_positions_and_reloads_as_live(tiny_model, model_id):
    """A session created with a reduction before the LLM and ``das`` reduces its appended clips
    the same way: each segment's tokens into the LLM are about the retention's share, the next
    position is the one the unreduced conversation would have, and prefix + deltas restore it."""
    from videoqa.worker.types import ReductionSpec

    lm = tiny_model(model_id)
    reduced = PruningSpec("das", {}, 0.5, reduction=ReductionSpec("evs", {}, 0.5))
    talk = Conversation(lm, reduced, "what is in the video?")
    plain = Conversation(lm, PruningSpec("das", {}, 0.5), "what is in the video?")
    session = talk.session
    prefix = encode_prefix(session, lm.revision, "float32")
    records = []
    for other in (talk, plain):
        other.answer()
    records.append(encode_delta(session))
    session.records += 1
    session.mark_saved()
    state = talk.state
    unreduced = lm.adapter.prepare_segment(
        media(8, seed=3), state.next_pos, state.rope_delta, True, state.pending_token, session.clock_s
    )
    for other in (talk, plain):
        other.append(seed=3)
    segment = session.segments[-1]
    assert segment.encoded_tokens == plain.session.segments[-1].visual_tokens == unreduced.layout.num_visual_tokens
    assert segment.visual_tokens == round(0.5 * segment.encoded_tokens)
    mine = talk.state
    # the text after the clip sits where it would after the whole clip
    after = unreduced.first_index + unreduced.layout.prompt_length + unreduced.rope_delta
    assert mine.next_pos + mine.rope_delta == after
    records.append(encode_delta(session, segment=segment))
    back = restore(prefix, records, model_id=lm.model_id, revision=lm.revision, device=lm.device, dtype=lm.dtype)
    assert back.pruning.reduction == reduced.reduction and back.segments == session.segments
    assert (back.state.next_pos, back.state.rope_delta) == (mine.next_pos, mine.rope_delta)
    talk.ask("and then?")
    live_tokens, _ = talk.answer()
    back_runner = ModelRunner(lm)
    logits = back_runner.feed(back.state, back_runner.turn_input(back.state, "and then?", first=True))
    assert list(back_runner.stream(back.state, logits, GREEDY)) == live_tokens
