"""Batched decoding equals decoding each session alone: same greedy tokens, same logits, same caches,
for sessions of different lengths, pruning methods (recycled-entry biases, per-layer budgets) and
model families."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import WITH_MOE
from videoqa.worker.model.batch import DecodeBatch
from videoqa.worker.types import GenerationParams

#: (method, budget, frames, params): a full cache, a das cache with recycle bins (a logit bias on
#: the binned entries), and pyramidkv (different cache lengths per layer).
SESSIONS = [("full", 1.0, 8, {}), ("das", 0.4, 12, {"bins_per_frame": 1, "mass_bias": 1}), ("pyramidkv", 0.5, 4, {})]
STEPS = 10


def alone(gen, state, logits, steps: int) -> tuple[list[int], list[torch.Tensor]]:
    tokens, seen = [], []
    for token in gen.stream(state, logits, GenerationParams(max_new_tokens=steps + 1), on_logits=seen.append):
        tokens.append(token)
    return tokens, seen


@pytest.mark.parametrize("model_id", WITH_MOE)
def test_batched_steps_equal_unbatched(pruned, model_id):
    sessions = [
        pruned(model_id, method, budget, frames=frames, **params) for method, budget, frames, params in SESSIONS
    ]
    assert any(s.state.attention_bias for s in sessions), "a session with recycled-entry biases"
    assert len({tuple(s.state.cache_lengths) for s in sessions}) == len(sessions), "different cache lengths"
    gen = sessions[0].gen
    expected = [alone(gen, copy.deepcopy(s.state), s.logits, STEPS) for s in sessions]

    states = [copy.deepcopy(s.state) for s in sessions]
    logits = torch.stack([s.logits for s in sessions])
    batch = DecodeBatch(sessions[0].lm, states)
    tokens: list[list[int]] = [[] for _ in sessions]
    for _ in range(STEPS):
        chosen = [int(torch.argmax(row)) for row in logits]
        for row, token in zip(tokens, chosen, strict=True):
            row.append(token)
        for b, (_, exp_logits) in enumerate(expected):
            if len(tokens[b]) <= len(exp_logits):  # (alone, a row may have ended at its end-of-turn token)
                torch.testing.assert_close(logits[b], exp_logits[len(tokens[b]) - 1], rtol=1e-4, atol=1e-4)
        logits = batch.step(chosen)
    for b, (exp_tokens, _) in enumerate(expected):
        assert tokens[b][: len(exp_tokens)] == exp_tokens[:STEPS]
    assert max(len(t) for t, _ in expected) >= STEPS, "some session decoded every step alone"

    # each session's own cache went on exactly as if it had decoded alone
    for b, session in enumerate(sessions):
        reference = copy.deepcopy(session.state)
        for token in tokens[b]:
            gen.feed(reference, [token])
        assert states[b].next_pos == reference.next_pos and states[b].token_ids == reference.token_ids
        for mine, theirs in zip(states[b].cache.layers, reference.cache.layers, strict=True):
            torch.testing.assert_close(mine.keys, theirs.keys, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(mine.values, theirs.values, rtol=1e-4, atol=1e-5)


def test_a_batch_of_one_is_the_plain_step(pruned):
    session = pruned("tiny-qwen2-vl", "das", 0.5, bins_per_frame=1, mass_bias=1)
    state = copy.deepcopy(session.state)
    reference = copy.deepcopy(session.state)
    token = int(torch.argmax(session.logits))
    batched = DecodeBatch(session.lm, [state]).step([token])[0]
    torch.testing.assert_close(batched, session.gen.feed(reference, [token]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        DecodeBatch(session.lm, [state]).step([1, 2])


def test_a_lent_session_reads_the_same_and_comes_back_whole(pruned):
    """While in a batch a session's K/V live only in the stack; its lengths and bytes are answered
    without moving them; reading its cache gives it back (then the batch refuses to step)."""
    sessions = [
        pruned("tiny-qwen2-vl", "das", 0.5, bins_per_frame=1, mass_bias=1),
        pruned("tiny-qwen2-vl", "full", 1.0, frames=12),
    ]
    states = [copy.deepcopy(s.state) for s in sessions]
    references = [copy.deepcopy(s.state) for s in sessions]
    before = [s.cache_bytes() for s in states]
    batch = DecodeBatch(sessions[0].lm, states)
    assert all(s.lender is batch for s in states)
    assert [s.cache_bytes() for s in states] == before
    for token in (5, 9, 3):
        batch.step([token, token])
        for reference in references:
            sessions[0].gen.feed(reference, [token])
    assert [s.cache_lengths for s in states] == [r.cache_lengths for r in references]
    assert [s.cache_bytes() for s in states] == [r.cache_bytes() for r in references]
    assert batch.holds(states)
    layers = states[0].cache.layers  # gives the first session back
    assert states[0].lender is None and states[1].lender is batch and not batch.holds(states)
    for mine, theirs in zip(layers, references[0].cache.layers, strict=True):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError):
        batch.step([1, 1])
    batch.release()
    assert states[1].lender is None
    for mine, theirs in zip(states[1].cache.layers, references[1].cache.layers, strict=True):
        torch.testing.assert_close(mine.values, theirs.values, rtol=1e-4, atol=1e-5)


def test_the_stack_grows_past_its_first_capacity(pruned):
    from videoqa.worker.model.batch import GROW_STEPS

    session = pruned("tiny-qwen2-vl", "snapkv", 0.5)
    state, reference = copy.deepcopy(session.state), copy.deepcopy(session.state)
    batch = DecodeBatch(session.lm, [state])
    for step in range(GROW_STEPS + 6):
        token = 3 + step % 7
        logits = batch.step([token])[0]
        expected = session.gen.feed(reference, [token])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert state.cache_lengths == reference.cache_lengths
