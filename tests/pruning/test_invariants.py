"""Correctness invariants of the compression engine (each one a test that can fail)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import FAMILIES, WITH_MOE
from tests.pruning.conftest import media
from videoqa.worker.model.attention import Recording, RowGroup, recording
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.model.loader import load_model
from videoqa.worker.pruning.registry import describe_methods
from videoqa.worker.types import GenerationParams

ALL_METHODS = [m.name for m in describe_methods()]
QUESTION = "what is in the video?"


def conversation(gen: ModelRunner, state, logits, steps: int = 4) -> list[torch.Tensor]:
    """Logits of a few greedy steps, then of a follow-up question and its first steps."""
    seen: list[torch.Tensor] = []
    list(gen.stream(state, logits, GenerationParams(max_new_tokens=steps), on_logits=seen.append))
    follow = gen.feed(state, gen.turn_input(state, "and what comes next?", first=False))
    list(gen.stream(state, follow, GenerationParams(max_new_tokens=steps), on_logits=seen.append))
    return seen


@pytest.fixture(scope="module")
def plain_sdpa():
    """Reference models that run plain sdpa: no wrapper, no pruning."""
    models = {}

    def get(model_id: str):
        if model_id not in models:
            lm = load_model(model_id)
            lm.model.set_attn_implementation("sdpa")
            models[model_id] = lm
        return models[model_id]

    return get


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("model_id", WITH_MOE)
def test_keep_all_is_bit_identical_to_no_pruning(pruned, plain_sdpa, model_id, method):
    run = pruned(model_id, method, 1.0)
    gen, state, logits = run.gen, run.state, run.logits
    ref_lm = plain_sdpa(model_id)
    ref_gen = ModelRunner(ref_lm)
    ref_state, ref_logits = ref_gen.prefill(ref_lm.adapter.prepare(media(), QUESTION))
    assert state.cache_lengths == ref_state.cache_lengths
    for layer, ref in zip(state.cache.layers, ref_state.cache.layers, strict=True):
        assert torch.equal(layer.keys, ref.keys) and torch.equal(layer.values, ref.values)
    assert torch.equal(logits, ref_logits)
    if ref_state.linear is not None:  # a hybrid model's linear-attention states
        mine, theirs = state.linear.to_tensors(), ref_state.linear.to_tensors()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[n], theirs[n]) for n in mine)
    got, want = conversation(gen, state, logits), conversation(ref_gen, ref_state, ref_logits)
    assert len(got) == len(want)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), "keep-all must not change a single bit"


@pytest.mark.parametrize("model_id", FAMILIES)
def test_wrong_positions_after_a_real_prune_change_the_output(pruned, model_id):
    run = pruned(model_id, "das", 0.25)
    gen, state, logits = run.gen, run.state, run.logits
    list(gen.stream(state, logits, GenerationParams(max_new_tokens=2)))
    chunk = gen.turn_input(state, "and then?", first=False)
    checkpoint = state.checkpoint()
    right = gen.feed(state, chunk)
    state.rollback(checkpoint)
    state.next_pos = state.cache_length  # what a cache-length-based position would say
    wrong = gen.feed(state, chunk)
    assert not torch.allclose(right, wrong, atol=1e-3)


@pytest.mark.parametrize("model_id", FAMILIES)
def test_window_recompute_matches_eager_attention(model_id):
    lm = load_model(model_id)
    prompt = lm.adapter.prepare(media(), QUESTION)
    layout = prompt.layout
    window = torch.arange(layout.visual_end, layout.prompt_length)
    visual = torch.arange(layout.visual_start, layout.visual_end, 3)
    groups = [RowGroup("window", window), RowGroup("visual", visual, moments=True, entropy=True)]
    record = Recording(groups, chunk_bytes=4096)
    with recording(record):
        ModelRunner(lm).prefill(prompt)
    lm.model.set_attn_implementation("eager")
    with torch.no_grad():
        out = lm.model(**prompt.inputs, position_ids=prompt.position_ids, output_attentions=True)
    assert len(out.attentions) == lm.num_layers
    for layer, attn in enumerate(out.attentions):
        probs = attn[0].float()  # [H, L, L]
        expected_window = probs[:, window].mean(dim=1)
        assert torch.allclose(record.stats[layer]["window"].mean(), expected_window, atol=1e-5)
        visible = (torch.arange(probs.shape[-1])[None] <= visual[:, None]).sum(dim=0).clamp(min=1)
        expected_visual = probs[:, visual].sum(dim=1) / visible
        assert torch.allclose(record.stats[layer]["visual"].causal_mean(), expected_visual, atol=1e-5)
        # hae's spread and retentive_kv's entropy, over the rows that could see each key
        rows = probs[:, visual]  # [H, r, L]
        seen = (torch.arange(probs.shape[-1])[None] <= visual[:, None])[None]  # [1, r, L]
        variance = ((rows - expected_visual[:, None]) ** 2 * seen).sum(dim=1) / visible
        assert torch.allclose(record.stats[layer]["visual"].causal_variance(), variance, atol=1e-5)
        share = rows / rows.sum(dim=1, keepdim=True).clamp(min=1e-30)
        entropy = -torch.special.xlogy(share, share).sum(dim=1) / torch.log(visible.clamp(min=2).float())
        assert torch.allclose(record.stats[layer]["visual"].column_entropy(), entropy.clamp(0, 1), atol=1e-4)


def test_das_without_subsidy_or_bin_is_plain_alpha_mixed_topk(pruned):
    unpruned = copy.deepcopy(pruned("tiny-qwen2-vl", "full", 1.0).state.cache)
    run = pruned("tiny-qwen2-vl", "das", 0.3, gamma=1.0, bins_per_frame=0, alpha=0.5, quota=0)
    das_pipeline, das_state = run.pipeline, run.state
    ctx = das_pipeline.context(das_state)
    layout = das_pipeline.prompt.layout
    slots = max(1, round(0.3 * layout.num_visual_tokens))
    for layer_idx, layer in enumerate(das_state.cache.layers):
        c = ctx.stats(layer_idx, "window").mean()[:, ctx.visual].mean(dim=0)
        r = ctx.stats(layer_idx, "visual").causal_mean()[:, ctx.visual].mean(dim=0)
        mixed = 0.5 * c / c.sum() + 0.5 * r / r.sum()
        keep = ctx.visual[torch.sort(torch.topk(mixed, slots).indices).values]
        text_before = torch.arange(layout.visual_start)
        text_after = torch.arange(layout.visual_end, layout.prompt_length)
        expected = unpruned.layers[layer_idx].keys[:, :, torch.cat([text_before, keep, text_after])]
        assert torch.equal(layer.keys, expected)


def test_agnostic_alpha_governs_only_the_question_agnostic_prefill(pruned):
    def kept(aware: bool, **params):
        run = pruned("tiny-qwen2-vl", "das", 0.3, aware=aware, **params)
        return run.result.kept_per_frame, run.pipeline.context(run.state).window

    # Without a question, agnostic_alpha=0 runs no probe and scores like alpha=0.
    no_probe, window = kept(False, agnostic_alpha=0.0)
    assert not window.groups
    assert no_probe == kept(False, agnostic_alpha=0.0, alpha=0.0)[0] == kept(False, alpha=0.3, agnostic_alpha=0.0)[0]
    with_probe, window = kept(False, agnostic_alpha=0.9)
    assert window.groups and with_probe != no_probe
    # With the question in the prompt, agnostic_alpha changes nothing.
    assert kept(True, agnostic_alpha=0.0)[0] == kept(True, agnostic_alpha=1.0)[0]


def test_subsidy_moves_kept_tokens_toward_later_frames(pruned):
    kept = {}
    for gamma in (1.0, 4.0):
        result = pruned("tiny-qwen2-vl", "das", 0.25, frames=16, gamma=gamma, subsidy=0, bins_per_frame=0).result
        kept[gamma] = torch.tensor(result.kept_per_frame, dtype=torch.float32)
    frames = torch.arange(len(kept[1.0]), dtype=torch.float32)
    mean_frame = {g: float((k * frames).sum() / k.sum()) for g, k in kept.items()}
    assert mean_frame[4.0] > mean_frame[1.0], mean_frame
    assert kept[4.0][-1] >= kept[1.0][-1]


@pytest.mark.parametrize("per_head", [0, 1])
def test_recycled_entry_is_the_weighted_mean_of_its_frames_evicted_tokens(pruned, per_head):
    unpruned = copy.deepcopy(pruned("tiny-qwen2-vl", "full", 1.0).state.cache)
    run = pruned("tiny-qwen2-vl", "das", 0.3, per_head=per_head, bins_per_frame=1, quota=0)  # global top-k
    das, das_state, result = run.pipeline, run.state, run.result
    ctx = das.context(das_state)
    method = das.method
    layout = das.prompt.layout
    n_visual = layout.num_visual_tokens
    slots = max(1, round(0.3 * n_visual))
    frames = ctx.num_frames
    keep = slots - frames  # one recycled entry per frame inside the budget
    for layer_idx, layer in enumerate(das_state.cache.layers):
        scores = method.score(layer_idx, ctx).expand(ctx.num_kv_heads, n_visual)
        for h in range(ctx.num_kv_heads):
            kept = torch.zeros(n_visual, dtype=torch.bool)
            kept[torch.argsort(scores[h], descending=True, stable=True)[:keep]] = True
            keys = unpruned.layers[layer_idx].keys[0, h, ctx.visual]
            values = unpruned.layers[layer_idx].values[0, h, ctx.visual]
            for m in range(frames):
                evicted = (~kept) & (ctx.frame_of == m)
                weights = scores[h, evicted] / scores[h, evicted].sum()
                slot = layout.visual_start + keep + m
                expected_k = (weights[:, None] * keys[evicted]).sum(dim=0)
                expected_v = (weights[:, None] * values[evicted]).sum(dim=0)
                assert torch.allclose(layer.keys[0, h, slot], expected_k, atol=1e-5)
                assert torch.allclose(layer.values[0, h, slot], expected_v, atol=1e-5)
    assert result.recycled == frames


def test_bins_outside_the_budget_add_entries(pruned):
    inside = pruned("tiny-qwen2-vl", "snapkv", 0.3, bins_per_frame=1)
    outside = pruned("tiny-qwen2-vl", "snapkv", 0.3, bins_per_frame=1, bins_in_budget=0).state
    frames = len(inside.pipeline.prompt.layout.frame_spans)
    inside = inside.state
    assert outside.cache_length == inside.cache_length + frames


def test_mass_bias_reaches_decoding(pruned):
    plain_run = pruned("tiny-qwen2-vl", "das", 0.3, bins_per_frame=1)
    biased_run = pruned("tiny-qwen2-vl", "das", 0.3, bins_per_frame=1, mass_bias=1)
    gen, plain, logits = plain_run.gen, plain_run.state, plain_run.logits
    biased, biased_logits = biased_run.state, biased_run.logits
    assert biased.attention_bias and not plain.attention_bias
    for a, b in zip(plain.cache.layers, biased.cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys)  # same entries: only the decoding differs
    assert torch.equal(logits, biased_logits)  # the prefill's own logits are computed before pruning
    a = gen.feed(plain, gen.turn_input(plain, "and?", first=False))
    b = gen.feed(biased, gen.turn_input(biased, "and?", first=False))
    assert not torch.allclose(a, b, atol=1e-4)


def test_per_layer_budgets_decode_a_chunk_like_token_by_token(pruned):
    """PyramidKV's unequal layer lengths: the rebuilt per-layer mask makes a multi-token chunk
    equal to feeding its tokens one by one."""
    run = pruned("tiny-qwen2-vl", "pyramidkv", 0.3)
    gen, state = run.gen, run.state
    assert len(set(state.cache_lengths)) > 1
    chunk = gen.turn_input(state, "what about the last frame?", first=True)[:6]
    twin = copy.deepcopy(state)
    together = gen.feed(state, chunk)
    for token in chunk:
        alone = gen.feed(twin, [token])
    assert torch.allclose(together, alone, atol=1e-5)
