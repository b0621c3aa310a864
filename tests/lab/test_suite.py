"""The synthetic suite: deterministic per seed, disjoint splits, answers true to the rendered video."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from videoqa.worker.lab.suite import COLORS, FAMILIES, MAX_COUNT, build, generate, render, sample
from videoqa.worker.types import SamplingSpec


def digest(item) -> str:
    return hashlib.sha256(item.question.encode() + item.answer.encode() + item.media).hexdigest()


def test_generation_is_deterministic_and_splits_are_disjoint():
    first, again = generate("train", 12), generate("train", 12)
    assert [digest(x) for x in first] == [digest(x) for x in again]
    splits = {name: {digest(x) for x in generate(name, 12)} for name in ("train", "validation", "test")}
    assert not (splits["train"] & splits["validation"]) and not (splits["train"] & splits["test"])
    assert not (splits["validation"] & splits["test"])
    assert {x.family for x in first} == set(FAMILIES)
    with pytest.raises(ValueError):
        generate("dev", 1)


@pytest.mark.parametrize("frames", [8, 16, 64])
@pytest.mark.parametrize("family", FAMILIES)
def test_answers_follow_from_the_scene(family, frames):
    for seed in range(5):
        scene, question, answer, needle, aliases = build(family, seed, frames)
        assert len(scene) == frames and question.endswith("?") and answer
        present = [(i, item) for i, item in enumerate(scene) if item is not None]
        if family == "needle":
            shape = question.split("the ")[1].rstrip("?")
            hits = [i for i, item in present if item.shape == shape]
            assert len(hits) == 1 and scene[hits[0]].color == answer and needle == hits[0] / (frames - 1)
        elif family == "retrieval":
            color = question.split("is ")[1].rstrip("?")
            hits = [i for i, item in present if item.color == color]
            assert len(hits) == 1 and scene[hits[0]].shape == answer and needle == hits[0] / (frames - 1)
        elif family == "ordering":
            named = [tuple(p.split()) for p in question.split("first, the ")[1].rstrip("?").split(" or the ")]
            firsts = {pair: min(i for i, item in present if (item.color, item.shape) == pair) for pair in named}
            earliest = min(firsts, key=firsts.get)
            assert earliest[0] == answer and aliases == [" ".join(earliest)]
        elif family == "counting":
            shape = question.split("show a ")[1].rstrip("?")
            assert sum(item.shape == shape for _, item in present) == int(answer) <= MAX_COUNT
        elif family == "state_change":
            shape = question.split("the ")[1].split(" turn")[0]
            colors = [item.color for _, item in present if item.shape == shape]
            assert colors[-1] == answer and colors[0] != answer and len(set(colors)) == 2
        else:
            assert scene[-1].shape == answer and needle == 1.0


def test_rendered_colours_and_decoded_video():
    scene, _, answer, needle, _ = build("needle", 3, 8)
    frames = render(scene, 112, 3)
    k = round(needle * 7)
    item = scene[k]
    pixel = frames[k, int(item.y * 112), int(item.x * 112)]
    assert np.abs(pixel.astype(int) - COLORS[answer]).max() < 5

    from videoqa.worker.video.decode import MediaDecoder

    clip = sample("needle", 3, 8)
    with MediaDecoder() as decoder:
        media = decoder.decode(clip.kind, clip.media, SamplingSpec(num_frames=8, max_frames=8, max_resolution=448))
    assert media.frames.shape == (8, 112, 112, 3)
    decoded = media.frames[k, int(item.y * 112), int(item.x * 112)]
    assert np.abs(decoded.astype(int) - COLORS[answer]).max() < 25  # H.264 near-lossless


def test_suite_command_writes_a_video_and_prints_its_question(tmp_path, capsys):
    from videoqa.worker.lab.suite import main

    out = tmp_path / "demo.mp4"
    assert main([str(out), "--family", "retrieval", "--index", "3", "--frames", "8"]) == 0
    printed = capsys.readouterr()
    _, question, answer, *_ = build("retrieval", 2_000_003, 8)
    assert printed.out.strip() == question and printed.err.strip().endswith(f"expected answer: {answer}")
    assert out.read_bytes() == sample("retrieval", 2_000_003, 8).media
