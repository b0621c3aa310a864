"""Suite v2: deterministic, disjoint splits, answers re-derived from the scenes, evidence within 15%
of the visual tokens and true to the decoded pixels; the oracle keeps exactly the evidence."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import defaultdict

import numpy as np
import pytest
import torch

from videoqa.lab import suite_v2
from videoqa.lab.suite_v2 import (
    ALL_FAMILIES,
    DEMO_GRID,
    FAMILIES,
    FPS,
    FRAME_COUNTS,
    MAX_EVIDENCE_SHARE,
    TIME_FAMILIES,
    build,
    evidence_share,
    evidence_tokens,
    frame_count,
    generate,
    questions_about,
    render,
    starts,
    time_questions,
)


def digest(item) -> str:
    return hashlib.sha256(item.question.encode() + item.answer.encode() + item.media).hexdigest()


def test_generation_is_deterministic_and_splits_are_disjoint():
    first, again = generate("train", 6), generate("train", 6)
    assert [digest(x) for x in first] == [digest(x) for x in again]
    assert [x.evidence for x in first] == [x.evidence for x in again] and all(x.evidence for x in first)
    splits = {name: {digest(x) for x in generate(name, 6)} for name in ("train", "validation", "test")}
    assert not (splits["train"] & splits["validation"]) and not (splits["validation"] & splits["test"])
    assert not (splits["train"] & splits["test"])
    assert {x.family for x in first} == set(FAMILIES)
    with pytest.raises(ValueError):
        build("needle", 0, 8)  # shorter than a v2 video


def _named(text: str, after: str, before: str = "?") -> str:
    return text.split(after)[1].split(before)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_are_rederived_from_the_scene(family):
    """Each question's answer, re-derived from the scene alone (``questions_about``, and by hand
    per family): shots whose things the question names."""
    for frames in FRAME_COUNTS:
        for seed in range(12):
            scene, question = build(family, seed, frames)
            assert frame_count(scene) == frames and all(shot.frames % 2 == 0 for shot in scene)
            things = [(i, t) for i, shot in enumerate(scene) for t in shot.things]
            if family == "ordering":
                named = _named(question.text, "first, the ").split(" or the ")
                where = {s: [i for i, t in things if t.shape == s] for s in named}
                assert (
                    all(len(w) == 1 for w in where.values())
                    and min(named, key=lambda s: where[s][0]) == question.answer
                )
                continue
            derived = [q for q in questions_about(scene, random.Random(0)) if q.text == question.text]
            assert len(derived) == 1 and derived[0].answer == question.answer, (frames, seed, question)
            if family == "needle":
                hits = [t for _, t in things if t.shape == _named(question.text, "the ")]
                assert len(hits) == 1 and hits[0].color == question.answer
            elif family == "counting":
                shape = _named(question.text, "show a ")
                shots = sorted({i for i, t in things if t.shape == shape})
                assert len(shots) == int(question.answer) and all(b - a > 1 for a, b in itertools.pairwise(shots))
            elif family == "last_frames":
                assert [t.shape for t in scene[-1].things] == [question.answer]


@pytest.mark.parametrize("family", TIME_FAMILIES)
def test_time_answers_are_rederived_from_the_frames(family):
    """``time_at``: every frame within ±0.5 s of the asked second shows one thing, of the answer's
    shape; ``time_when``: the named colour and shape are shown in one shot only, starting at the
    answer (seconds). Both agree with :func:`time_questions`, and the default suite leaves them out."""
    assert not set(TIME_FAMILIES) & set(FAMILIES)
    for frames in (16, 64, 256):
        for seed in range(12):
            scene, question = build(family, seed, frames)
            assert question in time_questions(scene)
            shot_of = [i for i, shot in enumerate(scene) for _ in range(shot.frames)]  # frame -> shot
            if family == "time_at":
                second = int(_named(question.text, " at ", " second"))
                near = {shot_of[f] for f in range(len(shot_of)) if abs(f / FPS - second) <= 0.5}
                assert len(near) == 1 and [t.shape for t in scene[near.pop()].things] == [question.answer]
            else:
                color, shape = _named(question.text, "the ", " appear").split()
                shown = [
                    f
                    for f in range(len(shot_of))
                    if any((t.color, t.shape) == (color, shape) for t in scene[shot_of[f]].things)
                ]
                assert len({shot_of[f] for f in shown}) == 1 and shown[0] / FPS == float(question.answer)


def test_the_evidence_is_at_most_15_percent_of_the_visual_tokens():
    """Per family and frame count, over 40 seeds each: the share of visual tokens (4×4 merged tokens
    per pair of frames) that show the answer. A 20% budget can keep all of it."""
    shares: dict[tuple[str, int], list[float]] = defaultdict(list)
    for family in ALL_FAMILIES:
        for frames in FRAME_COUNTS:
            for seed in range(40):
                scene, question = build(family, seed, frames)
                shares[family, frames].append(evidence_share(scene, question))
    worst = max(max(values) for values in shares.values())
    assert 0 < worst <= MAX_EVIDENCE_SHARE == 0.15, worst
    means = {key: sum(v) / len(v) for key, v in shares.items()}
    assert all(means[f, 16] > means[f, 256] for f in ALL_FAMILIES), "longer videos: a smaller share"


def test_counted_shots_are_equal_amounts_of_evidence():
    """Every shot a counting question counts is one temporal patch with its thing on exactly 4
    merged tokens, so the evidence is 4 tokens per counted shot; counts up to 4 occur at 16 frames."""
    seen = set()
    for frames in (16, 64):
        for seed in range(30):
            scene, question = build("counting", seed, frames)
            shots = [i for i, _ in question.evidence]
            assert all(scene[i].frames == 2 for i in shots)
            assert len(evidence_tokens(scene, question)) == 4 * int(question.answer) == 4 * len(shots)
            seen.add((frames, int(question.answer)))
    assert {(16, n) for n in range(1, 5)} <= seen


def test_evidence_tokens_show_the_answer_in_the_pixels():
    """The evidence tokens' regions hold the answer's colour in the rendered frames (before and
    after H.264 and the worker's decoder); the video's other tokens of those frames do not."""
    from videoqa.lab.suite import COLORS
    from videoqa.worker.types import SamplingSpec
    from videoqa.worker.video.decode_child import decode_video

    for seed in range(3):
        scene, question = build("needle", seed, 32)
        item = suite_v2.sample("needle", seed, 32)
        decoded = decode_video(item.media, SamplingSpec(num_frames=32, max_frames=32, max_resolution=128)).frames
        assert decoded.shape == (32, 128, 128, 3)
        target = np.array(COLORS[question.answer], dtype=np.int16)
        cell = 128 // DEMO_GRID.rows
        ((shot_index, _),) = question.evidence
        first = starts(scene)[shot_index]
        tokens = set(evidence_tokens(scene, question))
        for frames in (render(scene, 128, seed), decoded):
            for k in range(scene[shot_index].frames):
                frame = frames[first + k].astype(np.int16)
                patch = (first + k) // DEMO_GRID.frames
                near = np.abs(frame - target).sum(-1) < 60  # pixels of the answer's colour
                for c in range(DEMO_GRID.per_patch):
                    r, col = divmod(c, DEMO_GRID.columns)
                    hits = near[r * cell : (r + 1) * cell, col * cell : (col + 1) * cell].sum()
                    if patch * DEMO_GRID.per_patch + c not in tokens:
                        assert hits < 8, "the answer's colour outside the evidence tokens"
                covered = sum(
                    near[(c // 4) * cell : (c // 4 + 1) * cell, (c % 4) * cell : (c % 4 + 1) * cell].sum()
                    for c in range(16)
                    if patch * 16 + c in tokens
                )
                assert covered > 300, "the object is in its evidence tokens"


def test_the_oracle_keeps_exactly_the_evidence_then_random_tokens(tiny_model):
    """Through the worker's progressive pipeline (chunks of 4 frames): after the prune, the visual
    entries are every evidence token plus a seeded random fill up to the budget; another seed
    changes the fill, never the evidence."""
    from videoqa.lab.oracle import EvidenceOracle, evidence_positions, evidence_recall
    from videoqa.worker.model.chunks import Chunking
    from videoqa.worker.model.generate import ModelRunner
    from videoqa.worker.model.state import TOKEN
    from videoqa.worker.pruning.pipeline import PrunedPrefill, run_to_end
    from videoqa.worker.types import SamplingSpec
    from videoqa.worker.video.decode_child import decode_video

    lm = tiny_model("tiny-qwen3-vl")
    item = suite_v2.sample("counting", 3, 16)  # (the tiny model's processor keeps 16 frames at 128²)
    media = decode_video(item.media, SamplingSpec(num_frames=16, max_frames=16, max_resolution=128))
    prompt = lm.adapter.prepare(media, item.question)
    evidence = evidence_positions(prompt.layout, item.evidence, DEMO_GRID.per_patch)
    visual = prompt.layout.num_visual_tokens
    assert visual == 8 * 16 and 0 < len(evidence) <= 0.15 * visual
    kept = []
    for seed in (0, 1):
        oracle = EvidenceOracle(0.2, evidence, seed=seed)
        done = run_to_end(PrunedPrefill(ModelRunner(lm), oracle, True, Chunking(frames=4)).steps(prompt))
        layer = done.state.slots.layer(0, done.state.cache_lengths[0])
        tokens = layer.order[0][layer.kind[0] == TOKEN].round().long()
        assert tokens.numel() == round(0.2 * visual) and set(evidence.tolist()) <= set(tokens.tolist())
        kept.append(set(tokens.tolist()) - set(evidence.tolist()))
        assert evidence_recall(done.state.slots, evidence) == 1.0
    assert kept[0] != kept[1], "the fill is random (seeded)"
    # the recall of a fill that misses a third of the evidence, counted per layer and KV head
    random_fill = EvidenceOracle(0.2, evidence[: len(evidence) * 2 // 3], seed=0)
    done = run_to_end(PrunedPrefill(ModelRunner(lm), random_fill, True).steps(prompt))
    layer = done.state.slots.layer(0, done.state.cache_lengths[0])
    held = set(layer.order[0][layer.kind[0] == TOKEN].round().long().tolist())
    share = sum(int(e) in held for e in evidence) / len(evidence)
    recall = evidence_recall(done.state.slots, evidence)
    assert recall == pytest.approx(share) and 2 / 3 - 0.1 < recall < 1
    assert evidence_recall(None, evidence) == 1.0  # nothing pruned
    with pytest.raises(ValueError):
        evidence_positions(prompt.layout, item.evidence, 4)  # evidence for another grid
    assert torch.equal(evidence, evidence_positions(prompt.layout, item.evidence, 16))
