"""`python -m videoqa.lab.count_mass`: the supervised head's mass on counted scenes, read back."""

from __future__ import annotations

import math

from videoqa.lab.count_mass import Reading, read, table
from videoqa.lab.suite_v2 import build


def test_reads_the_head_mass_on_each_counting_question_and_leaves_the_model_as_it_was():
    from videoqa.worker.model.tiny import build_tiny

    model, processor = build_tiny("tiny-qwen3-vl")
    seeds = [2_001_000, 2_001_001]
    readings = read(model, processor, seeds, 16)
    for seed, reading in zip(seeds, readings, strict=True):
        n = int(build("counting", seed, 16)[1].answer)
        assert reading.n == n and math.isclose(reading.target, n / (n + 4)) and reading.frames == 16
        assert reading.tokens > 0 and 0 < reading.mass < 1
    attention = model.model.language_model.layers[1].self_attn
    assert not hasattr(attention, "videoqa_watch") and not hasattr(attention, "videoqa_head0")
    assert model.config.text_config._attn_implementation == "sdpa"
    # the same head, read again, gives the same masses (a pure read)
    assert [r.mass for r in read(model, processor, seeds, 16)] == [r.mass for r in readings]


def test_table_groups_by_count():
    readings = [Reading(16, 1, 4, 0.2, 0.2), Reading(16, 1, 8, 0.3, 0.2), Reading(64, 2, 20, 0.35, 1 / 3)]
    lines = table(readings).splitlines()
    # n=1: 0.2 is nearest its target, 0.3 nearer n=2's 0.33; n=2: 0.35 nearest its own
    assert len(lines) == 4 and lines[2].startswith("| 1 | 0.20 | 0.25 (0.20-0.30) | 4-8 | 0.50 |")
    assert lines[3] == "| 2 | 0.33 | 0.35 (0.35-0.35) | 20-20 | 1.00 | – (1) |"
