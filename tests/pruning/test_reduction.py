"""Reduction before the language model: keep-all is no reduction, kept tokens keep their
features and positions, positions are exercised, and it composes with chunks and KV pruning."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import FAMILIES
from tests.pruning.conftest import media
from tests.pruning.test_invariants import QUESTION, conversation
from videoqa.worker.errors import InvalidInput
from videoqa.worker.model.chunks import Chunking
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.pruning.pipeline import PrunedPrefill, StepDone, run_to_end
from videoqa.worker.pruning.registry import build_method
from videoqa.worker.reduction.base import select
from videoqa.worker.reduction.methods.evs import dissimilarity
from videoqa.worker.reduction.prompt import reduce_steps, reduced
from videoqa.worker.reduction.registry import build_reduction, describe_reductions
from videoqa.worker.types import PruningSpec, ReductionSpec

FRAMES = 12


def static_media(frames: int = FRAMES, moving: tuple[int, ...] = ()):
    """A video whose frames repeat the first, except ``moving`` ones (which differ everywhere)."""
    still = media(1, seed=3)
    fresh = media(frames, seed=4)
    out = still.frames.repeat(frames, axis=0)
    for f in moving:
        out[f] = fresh.frames[f]
    return type(still).from_array(out)


def run(lm, reduction: ReductionSpec | None, method="full", budget=1.0, chunking=None, video=None, aware=True):
    pipeline = PrunedPrefill(
        ModelRunner(lm),
        build_method(PruningSpec(method, {}, budget)),
        aware,
        chunking,
        build_reduction(reduction) if reduction else None,
    )
    prompt = lm.adapter.prepare(video or media(FRAMES), QUESTION if aware else None)
    return prompt, run_to_end(pipeline.steps(prompt))


@pytest.mark.parametrize("method", ["evs", "vidcom2"])
@pytest.mark.parametrize("model_id", FAMILIES)
def test_retention_100_is_bit_identical_to_no_reduction(tiny_model, model_id, method):
    lm = tiny_model(model_id)
    _, plain = run(lm, None)
    _, kept = run(lm, ReductionSpec(method, {}, 1.0))
    assert kept.reduction.visual_after == kept.reduction.visual_before
    assert torch.equal(kept.logits, plain.logits)
    assert kept.state.next_pos + kept.state.rope_delta == plain.state.next_pos + plain.state.rope_delta
    gen = ModelRunner(lm)
    reduced_turns = conversation(gen, kept.state, kept.logits)
    for a, b in zip(reduced_turns, conversation(gen, plain.state, plain.logits), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("model_id", FAMILIES)
def test_kept_tokens_keep_their_embeddings_and_positions(tiny_model, model_id):
    lm = tiny_model(model_id)
    prompt = lm.adapter.prepare(media(FRAMES), QUESTION)
    out = run_to_end(reduce_steps(lm.adapter, prompt, build_reduction(ReductionSpec("evs", {}, 0.4))))
    small = out.prompt
    assert out.visual_after < out.visual_before
    assert small.layout.num_visual_tokens == out.visual_after == out.kept_visual.numel()
    n = len(prompt.layout.frame_spans)
    full = lm.adapter.video_features(prompt.inputs, 0, n)
    visual = torch.cat([torch.arange(s, e) for s, e in prompt.layout.frame_spans])
    rows = torch.searchsorted(visual, out.kept_visual)
    assert torch.equal(small.features.tokens, full.tokens[rows])
    for mine, theirs in zip(small.features.deepstack, full.deepstack, strict=True):
        assert torch.equal(mine, theirs[rows])
    small_visual = torch.cat([torch.arange(s, e) for s, e in small.layout.frame_spans])
    assert torch.equal(small.position_ids[..., small_visual], prompt.position_ids[..., out.kept_visual])
    # text keeps its positions: the question's tokens, and the next text position after the prompt
    tail = prompt.layout.prompt_length - prompt.layout.visual_end
    assert torch.equal(small.position_ids[..., -tail:], prompt.position_ids[..., -tail:])
    assert small.layout.prompt_length + small.rope_delta == prompt.layout.prompt_length + prompt.rope_delta
    ids = small.inputs["input_ids"][0]
    assert int((ids == lm.adapter.video_token_id).sum()) == out.visual_after


@pytest.mark.parametrize("model_id", ["tiny-qwen2-vl", "tiny-llava-onevision", "tiny-qwen3-vl"])
def test_kept_tokens_at_contiguous_positions_change_the_logits(tiny_model, model_id):
    """The original positions are exercised: the same kept tokens at contiguous positions (what a
    reduction that rebuilt the prompt from scratch would give) answer differently."""
    lm = tiny_model(model_id)
    prompt = lm.adapter.prepare(media(FRAMES), QUESTION)
    small = run_to_end(reduce_steps(lm.adapter, prompt, build_reduction(ReductionSpec("evs", {}, 0.3)))).prompt
    gen = ModelRunner(lm)
    _, right = gen.prefill(small)
    squeezed = torch.arange(small.layout.prompt_length).expand_as(small.position_ids).contiguous()
    wrong = dataclasses.replace(small, position_ids=squeezed)
    _, moved = gen.prefill(wrong)
    assert not torch.allclose(right, moved, atol=1e-4)


@pytest.mark.parametrize("model_id", ["tiny-qwen2-vl", "tiny-qwen3-vl", "tiny-qwen3.5"])
def test_chunked_reduced_prefill_equals_one_shot_and_composes_with_das(tiny_model, model_id):
    lm = tiny_model(model_id)
    spec = ReductionSpec("vidcom2", {}, 0.5)
    _, one = run(lm, spec, "das", 0.4)
    _, chunked = run(lm, spec, "das", 0.4, Chunking(frames=4))
    assert chunked.chunks > 1 and one.reduction.visual_after == chunked.reduction.visual_after
    assert one.result.visual_kept == chunked.result.visual_kept == round(0.4 * one.reduction.visual_after)
    _, keep_all_chunked = run(lm, spec, "full", 1.0, Chunking(frames=4))
    _, keep_all = run(lm, spec, "full", 1.0)
    torch.testing.assert_close(keep_all_chunked.logits, keep_all.logits, atol=2e-4, rtol=0)


def test_a_long_reduction_yields_between_vision_tower_calls(tiny_model):
    lm = tiny_model("tiny-qwen2-vl")
    pipeline = PrunedPrefill(
        ModelRunner(lm), build_method(PruningSpec()), True, None, build_reduction(ReductionSpec("evs", {}, 0.5))
    )
    steps = pipeline.steps(lm.adapter.prepare(media(40), QUESTION))  # 20 spans: three tower calls
    paused = 0
    while True:
        try:
            paused += isinstance(next(steps), StepDone)
        except StopIteration:
            break
    assert paused == 2


def test_evs_drops_what_repeats_and_keeps_what_moves(tiny_model):
    lm = tiny_model("tiny-qwen2-vl")
    video = static_media(FRAMES, moving=(6, 7))  # span 3 (frames 6-7) is new, span 4 returns to the still
    prompt, out = run(lm, ReductionSpec("evs", {"threshold": 0.999}, 1.0), video=video)
    spans = [e - s for s, e in out.reduction.prompt.layout.frame_spans]
    per_span = prompt.layout.frame_spans[0][1] - prompt.layout.frame_spans[0][0]
    assert spans[0] == per_span  # the first span whole
    # the new span and the one after it (new again against it) keep nearly all (a random tower maps
    # a few places to nearly the same feature whatever the pixels); repeats keep their one token
    assert spans[3] >= per_span - 2 and spans[4] >= per_span - 2, spans
    assert all(k == 1 for i, k in enumerate(spans) if i not in (0, 3, 4)), spans


def test_selection_rules_on_known_scores():
    scores = [torch.tensor([0.1, 0.2]), torch.tensor([0.9, 0.0, 0.8]), torch.tensor([0.3, 0.05])]
    masks = select(scores, 5, whole=(0,))
    assert [m.tolist() for m in masks] == [[True, True], [True, False, True], [True, False]]
    masks = select(scores, 1, whole=())  # each span's best is kept whatever the count
    assert [int(m.sum()) for m in masks] == [1, 1, 1]
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = dissimilarity([a, a.clone(), torch.tensor([[1.0, 0.0], [1.0, 0.0], [5.0, 5.0]])])
    assert d[0].tolist() == [2.0, 2.0] and d[1].tolist() == [0.0, 0.0] and d[2][:2].tolist() == [0.0, 1.0]
    assert d[2][2] == 2.0  # no counterpart in the previous span


def test_vidcom2_gives_the_unique_frame_more_and_hits_the_retention():
    torch.manual_seed(0)
    common = torch.randn(1, 16)
    spans = [common + 0.05 * torch.randn(8, 16) for _ in range(5)]
    spans[2] = torch.randn(8, 16)  # one frame unlike the rest
    method = build_reduction(ReductionSpec("vidcom2", {}, 0.25))
    masks = method.keep(spans)
    kept = [int(m.sum()) for m in masks]
    assert sum(kept) == 10 and min(kept) >= 1
    assert kept[2] == max(kept) and kept[2] > 2


def test_bad_reduction_specs_are_invalid_input():
    for spec, field in [
        (ReductionSpec("nope"), "pruning.reduction.method"),
        (ReductionSpec("evs", {}, 1.5), "pruning.reduction.retention"),
        (ReductionSpec("evs", {"threshold": 2.0}), "pruning.reduction.params.threshold"),
        (ReductionSpec("evs", {"bogus": 1.0}), "pruning.reduction.params.bogus"),
        (ReductionSpec("", {}, 0.5), "pruning.reduction.method"),
    ]:
        with pytest.raises(InvalidInput) as err:
            build_reduction(spec)
        assert err.value.field == field
    assert build_reduction(ReductionSpec()) is None and build_reduction(ReductionSpec("none")) is None
    assert {d.name for d in describe_reductions()} == {"evs", "vidcom2"}


def test_a_mask_that_empties_a_span_is_refused(tiny_model):
    lm = tiny_model("tiny-qwen2-vl")
    prompt = lm.adapter.prepare(media(4), QUESTION)
    n = len(prompt.layout.frame_spans)
    features = lm.adapter.video_features(prompt.inputs, 0, n)
    masks = [torch.ones(e - s, dtype=torch.bool) for s, e in prompt.layout.frame_spans]
    masks[1][:] = False
    with pytest.raises(ValueError):
        reduced(prompt, features, masks)
