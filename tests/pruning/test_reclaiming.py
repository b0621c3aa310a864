"""``hae`` and ``retentive_kv``: the methods whose state outlives the prefill (a decode-time recycle
bin; a linear-attention memory of evicted tokens). Their invariants: no eviction is the full cache
bit for bit, one index set in every layer, a binned and restored entry is the original, an empty
memory is plain attention, and cancelled turns, batches and stored records carry the state."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import FAMILIES
from videoqa.worker.model.attention import RetainedLayer, _mix_retained, feature_map, retained_state
from videoqa.worker.model.batch import DecodeBatch
from videoqa.worker.pruning.decode_bin import BinPolicy, DecodeRecycleBin
from videoqa.worker.pruning.memory import RetainedMemory, fold
from videoqa.worker.types import GenerationParams

#: A bin that moves entries within a few tokens on a tiny random model (scores hover around 1).
BUSY_BIN = {"interval": 2, "evict_below": 0.95, "restore_above": 1.05, "decay": 0.5}


def decode(gen, state, logits, steps: int = 10) -> tuple[list[int], list[torch.Tensor]]:
    seen: list[torch.Tensor] = []
    tokens = list(gen.stream(state, logits, GenerationParams(max_new_tokens=steps), on_logits=seen.append))
    return tokens, seen


def same_decoding(a: tuple[list[int], list[torch.Tensor]], b: tuple[list[int], list[torch.Tensor]]) -> bool:
    return a[0] == b[0] and all(torch.equal(x, y) for x, y in zip(a[1], b[1], strict=True))


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "agnostic"])
@pytest.mark.parametrize("model_id", FAMILIES)
def test_no_eviction_is_the_full_cache_bit_for_bit(pruned, model_id, aware):
    """Budget 1, nothing to evict: the cache, every logit and every token equal the full cache's,
    with hae's running scores observing every step (but never moving anything)."""
    full = pruned(model_id, "full", 1.0, aware)

    def continued(run):
        state, logits = copy.deepcopy(run.state), run.logits
        if not aware:
            logits = run.gen.feed(state, run.gen.turn_input(state, "what is in the video?", first=True))
        return decode(run.gen, state, logits)

    reference = continued(full)
    for method, params in (("hae", {"evict_below": 0.0}), ("retentive_kv", {})):
        run = pruned(model_id, method, 1.0, aware, **params)
        for mine, theirs in zip(run.state.cache.layers, full.state.cache.layers, strict=True):
            assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
        assert same_decoding(continued(run), reference), method
    assert isinstance(run.state.extension, type(None)), "retentive_kv with nothing evicted keeps no memory"


@pytest.mark.parametrize("text_ratio", [0.0, 0.5])
@pytest.mark.parametrize("model_id", FAMILIES)
def test_hae_keeps_one_index_set_in_every_layer(pruned, model_id, text_ratio):
    full = pruned(model_id, "full", 1.0)
    run = pruned(model_id, "hae", 0.25, text_ratio=text_ratio)
    kept = run.pipeline.method.kept_positions(run.pipeline.context(run.state))
    layout = run.pipeline.prompt.layout
    for mine, theirs in zip(run.state.cache.layers, full.state.cache.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys[:, :, kept]) and torch.equal(mine.values, theirs.values[:, :, kept])
    visual = torch.isin(kept, run.pipeline.context(run.state).visual).sum()
    if text_ratio:  # the joint stage took text too (never the sinks nor the question)
        assert kept.numel() < (layout.prompt_length - layout.num_visual_tokens) + visual
        assert set(range(4)) <= set(kept.tolist()) and set(range(layout.visual_end, layout.prompt_length)) <= set(
            kept.tolist()
        )
    else:
        assert visual == round(0.25 * layout.num_visual_tokens) and run.result.visual_kept == visual


def test_hae_statistics_come_from_one_layer_only(pruned):
    run = pruned("tiny-qwen2-vl", "hae", 0.25, layer=1)
    assert set(run.pipeline.record.stats) == {1}, "scoring is paid at one layer"


def test_a_binned_then_restored_entry_is_its_original_key_and_value(pruned):
    run = pruned("tiny-qwen2-vl", "hae", 0.4, interval=0)
    state = run.state
    original = [(layer.keys.clone(), layer.values.clone()) for layer in state.cache.layers]
    visual = torch.zeros(state.cache_length, dtype=torch.bool)
    layout = run.pipeline.prompt.layout
    visual[layout.visual_start : layout.visual_start + run.result.visual_kept] = True
    policy = BinPolicy(
        layer=0, interval=1, evict_below=0.5, restore_above=2.0, decay=0.0, capacity=64, purge=0, min_visual=0
    )
    bin_ = DecodeRecycleBin(policy, visual, len(state.cache.layers))
    state.extension = bin_
    chosen = visual.nonzero().flatten()[[0, 2, 3]]
    bin_.scores[:] = 1.0
    bin_.scores[chosen] = 0.1  # these three fade
    bin_.rebalance(state)
    assert bin_.size == 3 and bin_.moves["evicted"] == 3 and state.cache_length == len(visual) - 3
    for i, layer in enumerate(state.cache.layers):  # the rest of the cache is untouched, in order
        stay = torch.ones(len(visual), dtype=torch.bool)
        stay[chosen] = False
        assert torch.equal(layer.keys, original[i][0][:, :, stay])
        assert torch.equal(bin_.keys[i], original[i][0][0][:, chosen]) and torch.equal(
            bin_.values[i], original[i][1][0][:, chosen]
        )
    bin_.bin_scores[:] = 3.0  # they recover
    bin_.rebalance(state)
    assert bin_.size == 0 and bin_.moves["restored"] == 3
    for i, layer in enumerate(state.cache.layers):  # back, appended: exactly the original entries
        assert torch.equal(layer.keys[:, :, -3:], original[i][0][:, :, chosen])
        assert torch.equal(layer.values[:, :, -3:], original[i][1][:, :, chosen])


def test_a_full_bin_purges_its_lowest_or_oldest_entries(pruned):
    for purge, survivors in ((0, [0.2, 0.3]), (1, [0.1, 0.2])):
        run = pruned("tiny-qwen2-vl", "hae", 0.4, interval=0)
        visual = torch.zeros(run.state.cache_length, dtype=torch.bool)
        start = run.pipeline.prompt.layout.visual_start
        visual[start : start + 6] = True
        policy = BinPolicy(0, 1, 0.5, 9.0, 0.0, capacity=2, purge=purge, min_visual=0)
        bin_ = DecodeRecycleBin(policy, visual, len(run.state.cache.layers))
        for step, score in enumerate((0.3, 0.2, 0.1)):  # one entry binned per round: older ones score higher
            bin_.steps = step
            bin_.scores[:] = 1.0
            bin_.scores[bin_.visual.nonzero()[0]] = score
            bin_.rebalance(run.state)
        assert bin_.size == 2 and bin_.moves == {"evicted": 3, "restored": 0, "purged": 1}
        assert sorted(bin_.bin_scores.tolist()) == pytest.approx(survivors)  # 0: lowest gone; 1: oldest gone


@pytest.mark.parametrize("model_id", FAMILIES)
def test_hae_moves_entries_while_decoding_and_a_rollback_undoes_it(pruned, model_id):
    run = pruned(model_id, "hae", 0.4, **BUSY_BIN)
    state, gen = run.state, run.gen
    before = copy.deepcopy(state)
    checkpoint = state.checkpoint()
    tokens, _ = decode(gen, state, run.logits, steps=16)
    moves = state.extension.moves
    assert moves["evicted"] > 0 and moves["restored"] > 0, moves
    visual, binned = state.extension.counts()
    assert binned == state.extension.size and visual + binned <= run.result.visual_kept + moves["restored"]
    state.rollback(checkpoint)
    for mine, theirs in zip(state.cache.layers, before.cache.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    assert state.extension.size == 0 and torch.equal(state.extension.scores, before.extension.scores)
    assert (state.next_pos, state.token_ids) == (before.next_pos, before.token_ids)
    again, _ = decode(gen, state, run.logits, steps=16)
    assert again == tokens, "after the rollback the same turn decodes the same way"


def test_positions_are_exercised_after_moves(pruned):
    """Moved entries keep their rotary positions: wrong decode positions change the output."""
    run = pruned("tiny-qwen2-vl", "hae", 0.4, **BUSY_BIN)
    decode(run.gen, run.state, run.logits, steps=12)
    assert run.state.extension.moves["evicted"] > 0
    right = copy.deepcopy(run.state)
    wrong = copy.deepcopy(run.state)
    wrong.next_pos += 7
    a = run.gen.feed(right, run.gen.turn_input(right, "and then?", first=False))
    b = run.gen.feed(wrong, run.gen.turn_input(wrong, "and then?", first=False))
    assert not torch.allclose(a, b)


def test_empty_memory_is_plain_attention():
    torch.manual_seed(0)
    out = torch.randn(2, 3, 4, 8)  # [B, q, H, D] as sdpa returns it
    query = torch.randn(2, 4, 3, 8)  # [B, H, q, D]
    empty = RetainedLayer(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8), torch.zeros(2, 2))
    assert torch.equal(_mix_retained(out, query, empty), out)
    state, normalizer = fold(torch.randn(2, 0, 8), torch.randn(2, 0, 8), torch.ones(2, 0))
    assert not state.any() and not normalizer.any()
    # an empty state with a gate still reads zero: (1 - g)·out, within 1e-6 of scaling out
    gated = RetainedLayer(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8), torch.full((2, 2), 0.25))
    torch.testing.assert_close(_mix_retained(out, query, gated), 0.75 * out, atol=1e-6, rtol=0)


def test_memory_read_out_is_linear_attention_over_the_folded_tokens():
    torch.manual_seed(1)
    keys, values, beta = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.rand(2, 5)
    state, normalizer = fold(keys, values, beta)
    query = torch.randn(1, 4, 1, 8)  # two query heads per KV head
    out = torch.zeros(1, 1, 4, 8)
    mixed = _mix_retained(out, query, RetainedLayer(state[None], normalizer[None], torch.ones(1, 2)))
    for h in range(4):
        kv = h // 2
        weights = beta[kv] * (feature_map(query[0, h, 0]) * feature_map(keys[kv])).sum(-1)  # [5]
        expected = (weights[:, None] * values[kv]).sum(0) / weights.sum()
        torch.testing.assert_close(mixed[0, 0, h], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "agnostic"])
@pytest.mark.parametrize("model_id", FAMILIES)
def test_retentive_kv_memory_holds_the_evicted_tokens_and_is_read(pruned, model_id, aware):
    run = pruned(model_id, "retentive_kv", 0.25, aware)
    memory = run.state.extension
    assert isinstance(memory, RetainedMemory) and set(memory.layers) == set(range(run.lm.num_layers))
    for layer in memory.layers.values():
        assert 0 < float(layer.gate.max()) <= 1 and layer.normalizer.min() > 0  # φ > 0, tokens folded

    def asked(run, drop_memory: bool = False):
        """The decoding after the question (asked now in agnostic mode), on a copy of the state."""
        state = copy.deepcopy(run.state)
        if drop_memory:
            state.extension = None
        logits = run.logits if aware else run.gen.feed(state, run.gen.turn_input(state, "what is in the video?", True))
        return decode(run.gen, state, logits)

    plain = asked(run, drop_memory=True)
    assert not torch.allclose(asked(run)[1][1], plain[1][1]), "the memory is read"
    # the gate is the only way the memory reaches the output: at gate scale 0 it is as if absent
    silent = pruned(model_id, "retentive_kv", 0.25, aware, gate_scale=0.0)
    assert silent.state.extension is not None and same_decoding(asked(silent), plain)


@pytest.mark.parametrize("model_id", FAMILIES)
def test_batched_steps_carry_memories_and_observers(pruned, model_id):
    """Rows with a retained memory, with a recycle bin's observer, and with neither decode in one
    batch exactly as each alone: same tokens and logits, same running scores."""
    sessions = [
        pruned(model_id, "retentive_kv", 0.3),
        pruned(model_id, "hae", 0.4, frames=12, interval=1000),  # observes; no round within the test
        pruned(model_id, "full", 1.0, frames=4),
    ]
    gen, steps = sessions[0].gen, 8
    expected = [decode(gen, copy.deepcopy(s.state), s.logits, steps + 1) for s in sessions]
    states = [copy.deepcopy(s.state) for s in sessions]
    alone_bin = copy.deepcopy(sessions[1].state)
    decode(gen, alone_bin, sessions[1].logits, steps + 1)
    logits = torch.stack([s.logits for s in sessions])
    batch = DecodeBatch(sessions[0].lm, states)
    for step in range(steps):
        chosen = [int(torch.argmax(row)) for row in logits]
        for b, (tokens, seen) in enumerate(expected):
            if step < len(tokens) - 1:
                assert chosen[b] == tokens[step]
                torch.testing.assert_close(logits[b], seen[step], rtol=1e-4, atol=1e-4)
        logits = batch.step(chosen)
    batch.release()
    torch.testing.assert_close(states[1].extension.scores, alone_bin.extension.scores, rtol=1e-4, atol=1e-5)


def test_retained_memory_context_leaves_other_layers_alone(pruned):
    run = pruned("tiny-qwen2-vl", "retentive_kv", 0.25)
    memory = run.state.extension
    plain = copy.deepcopy(run.state)
    plain.extension = None
    ids = run.gen.turn_input(plain, "and?", first=False)
    with retained_state({}):
        reference = run.gen.feed(copy.deepcopy(plain), ids)
    one_layer = copy.deepcopy(plain)
    one_layer.extension = RetainedMemory({0: memory.layers[0]})
    assert not torch.equal(run.gen.feed(one_layer, ids), reference)


def test_a_followup_question_takes_back_the_binned_entries_it_looks_at(pruned):
    """A question re-scores the bin by its own attention; entries above ``restore_above`` return
    and the question is read again with them: as if they had been in the cache all along."""
    run = pruned("tiny-qwen2-vl", "hae", 0.4, interval=0)
    layout = run.pipeline.prompt.layout
    visual = torch.zeros(run.state.cache_length, dtype=torch.bool)
    visual[layout.visual_start : layout.visual_start + run.result.visual_kept] = True
    chosen = visual.nonzero().flatten()[[1, 4, 5]]
    # Reference: the same entries moved to the end of the cache (where restored entries go), no bin.
    reference = copy.deepcopy(run.state)
    order = torch.cat([torch.tensor([i for i in range(len(visual)) if i not in chosen.tolist()]), chosen])
    for layer in reference.cache.layers:
        layer.keys, layer.values = layer.keys[:, :, order], layer.values[:, :, order]
    for restore_above, returns in ((0.0, True), (1e6, False)):
        state = copy.deepcopy(run.state)
        policy = BinPolicy(0, 1, 0.5, restore_above, 0.0, capacity=64, purge=0, min_visual=0)
        state.extension = bin_ = DecodeRecycleBin(policy, visual, len(state.cache.layers))
        bin_.scores[:] = 1.0
        bin_.scores[chosen] = 0.1
        bin_.rebalance(state)
        assert bin_.size == 3
        ids = run.gen.turn_input(state, "and then?", first=False)
        logits = run.gen.feed(state, ids)
        assert (bin_.size == 0) is returns and bin_.moves["restored"] == (3 if returns else 0)
        assert state.next_pos == run.state.next_pos + len(ids) and state.token_ids[-len(ids) :] == ids
        assert state.cache_length == run.state.cache_length + len(ids) - (0 if returns else 3)
        assert bin_.scores.numel() == bin_.visual.numel() == state.cache_length
        if returns:
            expected = run.gen.feed(copy.deepcopy(reference), ids)
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
            for mine, theirs in zip(state.cache.layers, reference.cache.layers, strict=True):
                torch.testing.assert_close(mine.keys[:, :, : len(visual)], theirs.keys, rtol=0, atol=0)


@pytest.mark.parametrize("rows", [1, 3])
def test_running_scores_are_attention_relative_to_uniform(rows):
    """The bin's observer against a direct computation: GQA heads, a causal question chunk, the
    bin's keys in the softmax, masked entries not counted as visible."""
    torch.manual_seed(0)
    heads, kv_heads, length, dim, binned = 4, 2, 9, 8, 2
    query, key = torch.randn(1, heads, rows, dim), torch.randn(1, kv_heads, length, dim)
    policy = BinPolicy(0, 0, 0.5, 1.0, decay=0.25, capacity=8, purge=0, min_visual=0)
    bin_ = DecodeRecycleBin(policy, torch.ones(length, dtype=torch.bool), 1)
    bin_.keys, bin_.values = [torch.randn(kv_heads, binned, dim)], [torch.randn(kv_heads, binned, dim)]
    bin_.bin_scores, bin_.bin_since = torch.ones(binned), torch.zeros(binned, dtype=torch.long)
    mask = torch.zeros(1, 1, rows, length)
    mask[..., 2] = float("-inf")  # e.g. padding
    causal = torch.ones(rows, length, dtype=torch.bool).tril(length - rows)
    mask = mask.masked_fill(~causal, float("-inf"))
    bin_.observe(query, key, mask, scaling=0.5)
    keys = torch.cat([key[0], bin_.keys[0]], dim=1).repeat_interleave(heads // kv_heads, dim=0)  # [H, S+n, D]
    full_mask = torch.cat([mask[0, 0], torch.zeros(rows, binned)], dim=1)
    p = torch.softmax(query[0] @ keys.transpose(1, 2) * 0.5 + full_mask, dim=-1)  # [H, q, S+n]
    relative = (p * torch.isfinite(full_mask).sum(-1, keepdim=True)).mean(dim=(0, 1))
    if rows == 1:
        torch.testing.assert_close(bin_.scores, 0.25 + 0.75 * relative[:length])
        torch.testing.assert_close(bin_.bin_scores, 0.25 + 0.75 * relative[length:])
    else:  # a question re-scores the bin only
        torch.testing.assert_close(bin_.bin_scores, relative[length:])
        assert torch.equal(bin_.scores, torch.ones(length))
