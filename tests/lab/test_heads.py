"""Scoring without chosen heads (``videoqa eval --leave-out-heads``): the heads' statistics are
replaced by their layer's other heads' mean before the method scores; nothing else changes."""

from __future__ import annotations

import pytest
import torch

from videoqa.lab.heads import leave_out, neutralized, parse_heads
from videoqa.worker.model.attention import GroupStats


def test_a_left_out_head_reads_as_the_mean_of_the_others():
    colsum = torch.tensor([[9.0, 0.0, 0.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    stats = neutralized(GroupStats(colsum, torch.ones(3), 4, colsq=colsum * 2), (0,))
    assert stats.colsum[0].tolist() == [2.0, 2.0, 2.0] and torch.equal(stats.colsum[1:], colsum[1:])
    assert stats.colsq[0].tolist() == [4.0, 4.0, 4.0] and stats.colplogp is None and stats.rows == 4
    assert parse_heads("1:0,1:2,3:1") == {1: (0, 2), 3: (1,)}
    with pytest.raises(ValueError):
        parse_heads("1")
    with pytest.raises(ValueError):
        neutralized(GroupStats(colsum, torch.ones(3), 4), (0, 1, 2))


def test_leaving_out_a_head_changes_what_a_method_keeps_and_nothing_else(tiny_model):
    """snapkv on the tiny model, question-aware at 25%: scored without layer 1's head 0 it keeps
    another set in that layer (same length), the same set in layer 0, and its parameters."""
    from tests.pruning.conftest import media
    from videoqa.worker.model.generate import ModelRunner
    from videoqa.worker.pruning.pipeline import PrunedPrefill
    from videoqa.worker.pruning.registry import build_method
    from videoqa.worker.types import PruningSpec

    lm = tiny_model("tiny-qwen2-vl")
    prompt = lm.adapter.prepare(media(8), "what is in the video?")
    method = build_method(PruningSpec("snapkv", {}, 0.25))
    variant = leave_out(method, {1: (0,)})
    assert variant.budget == 0.25 and variant.name == "snapkv" and int(variant.window) == int(method.window)
    caches = []
    for each in (method, variant):
        pipeline = PrunedPrefill(ModelRunner(lm), each, True)
        state, _ = pipeline.prefill(prompt)
        pipeline.prune(state)
        caches.append(state.cache.layers)
    theirs, mine = caches
    assert [layer.keys.shape for layer in mine] == [layer.keys.shape for layer in theirs]
    assert torch.equal(mine[0].keys, theirs[0].keys), "layer 0 is scored as before"
    assert not torch.equal(mine[1].keys, theirs[1].keys), "layer 1 no longer reads head 0"


def test_the_harness_adds_a_variant_per_scoring_configuration():
    from videoqa.lab.harness import configurations, without_heads

    configs = configurations("full,das,random,oracle,snapkv", [], "0.2", "agnostic")
    variants = without_heads(configs, "1:0")
    assert sorted(c.name for c in variants) == ["das-without-L1H0", "snapkv-without-L1H0"]
    assert all(c.left_out == "1:0" and c.budget == 0.2 for c in variants)
