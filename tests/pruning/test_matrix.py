"""Every method × {no merger, Recycling Bin} × {question-aware, agnostic} × every family."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAMILIES
from videoqa.worker.pruning.registry import describe_methods
from videoqa.worker.types import GenerationParams

METHODS = [m.name for m in describe_methods() if m.name != "full"]
#: Methods that take the Recycling Bin's parameters (``hae`` has a decode-time bin of its own).
WITH_BIN = {m.name for m in describe_methods() if any(p.name == "bins_per_frame" for p in m.params)}
BUDGET = 0.25
#: Random models whose two KV heads prefer vision almost equally (madakv then compensates nothing).
EVEN_HEADS = {"tiny-qwen3-vl", "tiny-qwen3.5"}


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "agnostic"])
@pytest.mark.parametrize(
    ("method", "bins"),
    [(m, b) for m in METHODS for b in ((0, 1) if m in WITH_BIN else (0,))],
    ids=lambda v: v if isinstance(v, str) else ("bin" if v else "no-bin"),
)
@pytest.mark.parametrize("model_id", FAMILIES)
def test_method_runs_shrinks_and_continues(pruned, model_id, method, bins, aware):
    run = pruned(model_id, method, BUDGET, aware, **({"bins_per_frame": bins} if method in WITH_BIN else {}))
    gen, state, logits, result = run.gen, run.state, run.logits, run.result
    layout = run.pipeline.prompt.layout
    text = layout.prompt_length - layout.num_visual_tokens
    slots = max(1, round(BUDGET * layout.num_visual_tokens))
    lengths = state.cache_lengths
    assert all(length < layout.prompt_length for length in lengths), "the cache must physically shrink"
    if method == "pyramidkv":  # per-layer budgets, same mean
        assert len(set(lengths)) > 1 and abs(sum(lengths) / len(lengths) - (text + slots)) <= 1
    else:
        assert lengths == [text + slots] * len(lengths), "every layer holds the text plus the visual slots"
    for layer in state.cache.layers:  # keys and values agree, per layer
        assert layer.keys.shape == layer.values.shape
    if not (method == "madakv" and model_id in EVEN_HEADS and not bins):
        # (madakv merges only what a head gives up: here its heads' visual preferences can differ
        # by less than one slot's worth, 0.43 vs 0.45 of the window's attention)
        assert (result.recycled > 0) == (bins > 0 or method == "madakv")
    assert state.next_pos == layout.prompt_length, "the logical position is unchanged by pruning"

    if not aware:
        logits = gen.feed(state, gen.turn_input(state, "what is in the video?", first=True))
    answer = list(gen.stream(state, logits, GenerationParams(max_new_tokens=3)))
    follow = gen.feed(state, gen.turn_input(state, "and then?", first=False))
    assert answer and torch.isfinite(follow).all()
