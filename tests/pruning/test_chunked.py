"""Chunked prefill and progressive compression: what must hold whatever the chunk size."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.conftest import FAMILIES, WITH_MOE
from tests.pruning.conftest import media
from tests.pruning.test_invariants import ALL_METHODS, QUESTION, conversation
from videoqa.worker.model.chunks import Chunking, plan_chunks, steps_of
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.pruning.pipeline import PrunedPrefill, StepDone, run_to_end
from videoqa.worker.pruning.registry import build_method
from videoqa.worker.types import PruningSpec

FRAMES = 12


def chunked(lm, method: str, budget: float, aware: bool, chunking: Chunking, frames: int = FRAMES, **params):
    pipeline = PrunedPrefill(ModelRunner(lm), build_method(PruningSpec(method, params, budget)), aware, chunking)
    prompt = lm.adapter.prepare(media(frames), QUESTION if aware else None)
    return pipeline, prompt, run_to_end(pipeline.steps(prompt))


def one_shot(lm, method: str, budget: float, aware: bool, frames: int = FRAMES, **params):
    pipeline = PrunedPrefill(ModelRunner(lm), build_method(PruningSpec(method, params, budget)), aware)
    state, logits = pipeline.prefill(lm.adapter.prepare(media(frames), QUESTION if aware else None))
    return state, logits, pipeline.prune(state)


def test_chunks_fall_between_frame_spans_and_cover_the_prompt(tiny_model):
    layout = tiny_model("tiny-qwen2-vl").adapter.prepare(media(FRAMES), QUESTION).layout
    plan = plan_chunks(layout, Chunking(frames=4))
    assert [c.spans for c in plan] == [(0, 2), (2, 4), (4, 6)]  # 2 frames per temporal patch
    assert plan[0].start == 0 and plan[-1].end == layout.prompt_length
    assert all(a.end == b.start for a, b in itertools.pairwise(plan))
    assert all(c.start == layout.frame_spans[c.first_span][0] for c in plan[1:])
    per_span = layout.frame_spans[0][1] - layout.frame_spans[0][0]
    by_tokens = plan_chunks(layout, Chunking(frames=64, tokens=per_span * 2 + 1))
    assert [c.spans for c in by_tokens] == [(0, 2), (2, 4), (4, 6)]
    assert len(plan_chunks(layout, Chunking(frames=3))) == 6  # rounded down to whole temporal patches
    assert len(plan_chunks(layout, Chunking(frames=1000))) == len(plan_chunks(layout, Chunking())) == 1


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "agnostic"])
@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("model_id", FAMILIES)
def test_a_chunk_larger_than_the_video_is_the_one_shot_path_bit_for_bit(tiny_model, model_id, method, aware):
    lm = tiny_model(model_id)
    budget = 1.0 if method == "full" else 0.3
    state, logits, result = one_shot(lm, method, budget, aware)
    _, _, out = chunked(lm, method, budget, aware, Chunking(frames=4 * FRAMES))
    assert out.chunks == 1
    assert torch.equal(out.logits, logits)
    assert out.state.cache_lengths == state.cache_lengths and out.state.next_pos == state.next_pos
    for mine, theirs in zip(out.state.cache.layers, state.cache.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    assert (out.result.visual_kept, out.result.recycled) == (result.visual_kept, result.recycled)


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "agnostic"])
@pytest.mark.parametrize("model_id", WITH_MOE)
def test_chunked_keep_all_equals_one_shot(tiny_model, model_id, aware):
    """Frame span by frame span, each chunk's vision features from its own frames: the same cache,
    logits and positions as one forward over the whole prompt (and then the same conversation)."""
    lm = tiny_model(model_id)
    state, logits, _ = one_shot(lm, "full", 1.0, aware)
    _, prompt, out = chunked(lm, "full", 1.0, aware, Chunking(frames=1))
    assert out.chunks == len(prompt.layout.frame_spans) > 2
    assert out.state.token_ids == state.token_ids
    assert (out.state.next_pos, out.state.rope_delta) == (state.next_pos, state.rope_delta)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=1e-5)
    for mine, theirs in zip(out.state.cache.layers, state.cache.layers, strict=True):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=0, atol=1e-5)
        torch.testing.assert_close(mine.values, theirs.values, rtol=0, atol=1e-5)
    runner = ModelRunner(lm)
    for a, b in zip(conversation(runner, out.state, out.logits), conversation(runner, state, logits), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["full", "das", "snapkv"])
@pytest.mark.parametrize("model_id", FAMILIES)
def test_a_chunk_run_in_several_forwards_equals_one_forward(tiny_model, model_id, method):
    """``step_tokens`` splits each chunk's forward (others run between): the same logits, cache
    and compression as one forward per chunk, and a yield between every two forwards."""
    lm = tiny_model(model_id)
    budget = 1.0 if method == "full" else 0.3
    _, prompt, whole = chunked(lm, method, budget, False, Chunking(frames=4))
    pipeline = PrunedPrefill(ModelRunner(lm), build_method(PruningSpec(method, {}, budget)), False)
    pipeline.chunking = Chunking(frames=4, step_tokens=7)
    steps, yields = pipeline.steps(prompt), 0
    while True:
        try:
            yields += isinstance(next(steps), StepDone)
        except StopIteration as done:
            split = done.value
            break
    plan = plan_chunks(prompt.layout, Chunking(frames=4))
    assert yields == sum(len(steps_of(c, 7)) - 1 for c in plan) > len(plan)
    torch.testing.assert_close(split.logits, whole.logits, rtol=0, atol=1e-5)
    assert split.state.cache_lengths == whole.state.cache_lengths
    assert (split.result.visual_kept, split.result.recycled) == (whole.result.visual_kept, whole.result.recycled)
    for mine, theirs in zip(split.state.cache.layers, whole.state.cache.layers, strict=True):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=0, atol=1e-5)
        torch.testing.assert_close(mine.values, theirs.values, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_id", FAMILIES)
def test_each_chunk_runs_at_its_own_positions(tiny_model, model_id):
    """Positions are exercised: the chunks after the first run at positions moved by a few steps
    give other logits, so the chunked path's agreement above is not an accident of positions."""
    lm = tiny_model(model_id)
    runner = ModelRunner(lm)
    prompt = lm.adapter.prepare(media(FRAMES), QUESTION)
    plan = plan_chunks(prompt.layout, Chunking(frames=4))
    moved = prompt.position_ids.clone()
    moved[..., plan[1].start :] += 7
    shifted = type(prompt)(prompt.inputs, moved, prompt.rope_delta, prompt.layout)
    outputs = []
    for p in (prompt, shifted):
        state = runner.begin(p)
        for chunk in plan:
            logits = runner.prefill_range(state, p, chunk.start, chunk.end, chunk.spans)
        outputs.append(logits)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)


@pytest.mark.parametrize("slack", [1.0, 2.0])
@pytest.mark.parametrize("method", ["das", "snapkv", "csp", "madakv", "pyramidkv", "streaming_llm"])
def test_progressive_compression_holds_at_most_the_budget_plus_one_chunk(tiny_model, method, slack):
    """Between chunks a progressive method keeps ``slack`` x its budget; the cache never holds
    more than that plus one chunk, and ends at exactly the budget."""
    lm = tiny_model("tiny-qwen2-vl")
    chunking = Chunking(frames=2, slack=slack)
    pipeline, prompt, out = chunked(lm, method, 0.25, False, chunking, frames=16, bins_per_frame=1)
    layout = prompt.layout
    steps = []
    generator = PrunedPrefill(ModelRunner(lm), pipeline.method, False, chunking).steps(prompt)
    while True:
        try:
            steps.append(next(generator))
        except StopIteration:
            break
    per_span = layout.frame_spans[0][1] - layout.frame_spans[0][0]
    text = layout.prompt_length - layout.num_visual_tokens
    entry = lm.kv_bytes_per_token
    kept = math.ceil(slack * round(0.25 * layout.num_visual_tokens))
    bound = (kept + per_span + text) * entry
    if method == "pyramidkv":  # per-layer budgets: the shallowest layer keeps up to twice the mean
        bound = (2 * kept + per_span + text) * entry
    assert len(steps) == len(layout.frame_spans) > 4
    assert max(step.kv_bytes for step in steps) <= bound
    one_shot_peak = layout.prompt_length * entry
    assert max(step.kv_bytes for step in steps) < one_shot_peak
    assert out.result.visual_kept == round(0.25 * layout.num_visual_tokens)


def test_an_absolute_cap_bounds_the_cache_whatever_the_video_length(tiny_model):
    lm = tiny_model("tiny-qwen2-vl")
    lengths = {}
    for frames in (16, 48):  # both longer than twice the cap plus a chunk
        spec = PruningSpec("das", {}, 1.0, max_visual_tokens=20)
        pipeline = PrunedPrefill(ModelRunner(lm), build_method(spec), False, Chunking(frames=4))
        out = run_to_end(pipeline.steps(lm.adapter.prepare(media(frames), None)))
        assert out.result.visual_kept == 20
        lengths[frames] = (out.state.cache_length, out.peak_kv_bytes)
    assert lengths[16][0] == lengths[48][0]
    assert lengths[48][1] == lengths[16][1]  # the peak is twice the cap plus one chunk, at any length


def test_progressive_steps_keep_a_consistent_slot_map(tiny_model):
    """The slot map says which entries are visual tokens and recycled entries, per head; with a
    Recycling Bin its counts add up to every visual token seen (kept, or folded into a recycled
    entry, earlier recycled entries folded again with later evictions)."""
    from videoqa.worker.model.state import RECYCLED, TOKEN

    lm = tiny_model("tiny-qwen2-vl")
    _, prompt, out = chunked(lm, "das", 0.3, False, Chunking(frames=4), frames=16, bins_per_frame=1, per_head=1)
    state = out.state
    for i, length in enumerate(state.cache_lengths):
        layer = state.slots.layer(i, length)
        assert layer.length == length
        visual = (layer.kind == TOKEN) | (layer.kind == RECYCLED)
        counted = (layer.count * visual).sum(dim=1)
        assert torch.all(counted == prompt.layout.num_visual_tokens), counted
        assert bool((layer.kind == RECYCLED).any())


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "agnostic"])
@pytest.mark.parametrize("method", ["h2o", "look_m", "hae", "retentive_kv"])
def test_one_shot_methods_run_in_chunks_and_prune_once(tiny_model, method, aware):
    """A method that compresses once still prefills in chunks (so that an upload does not stall
    other sessions): its statistics are summed over the chunks' forwards, equal to one forward's,
    and it prunes once at the end, keeping what the one-shot path keeps."""
    lm = tiny_model("tiny-qwen2-vl")
    state, logits, result = one_shot(lm, method, 0.3, aware)
    _, prompt, out = chunked(lm, method, 0.3, aware, Chunking(frames=2))
    assert out.chunks == len(prompt.layout.frame_spans)
    assert out.peak_kv_bytes == prompt.layout.prompt_length * lm.kv_bytes_per_token  # the whole video
    assert (out.result.visual_kept, out.result.recycled) == (result.visual_kept, result.recycled)
    assert out.result.kept_per_frame == result.kept_per_frame
    assert out.state.cache_lengths == state.cache_lengths
    for mine, theirs in zip(out.state.cache.layers, state.cache.layers, strict=True):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=0, atol=1e-5)
    assert type(out.state.extension) is type(state.extension)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=1e-5)
