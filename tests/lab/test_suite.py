"""The synthetic suite: deterministic per seed, disjoint splits, answers true to the rendered video."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from videoqa.lab.suite import BACKGROUND, COLORS, FAMILIES, MAX_COUNT, build, generate, render, sample
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
            named = question.split("first, the ")[1].rstrip("?").split(" or the ")
            shown = {shape: [i for i, item in present if item.shape == shape] for shape in named}
            assert all(len(hits) == 1 for hits in shown.values()), "each named shape is shown once"
            assert min(named, key=lambda shape: shown[shape][0]) == answer and aliases == []
        elif family == "counting":
            shape = question.split("show a ")[1].rstrip("?")
            assert sum(item.shape == shape for _, item in present) == int(answer) <= MAX_COUNT
        elif family == "state_change":
            shape = question.split("the ")[1].split(" turn")[0]
            colors = [item.color for _, item in present if item.shape == shape]
            assert colors[-1] == answer and colors[0] != answer and len(set(colors)) == 2
        else:
            assert scene[-1].shape == answer and needle == 1.0


def test_every_object_stays_inside_its_quadrant():
    """An object is drawn inside one quadrant of the frame (what makes it one merged token of the
    demo model's 2x2 grid), and its quadrant is where its centre is."""
    for family in FAMILIES:
        scene, *_ = build(family, 7, 16)
        frames = render(scene, 112, 7)
        for item, frame in zip(scene, frames, strict=True):
            if item is None:
                continue
            drawn = np.abs(frame.astype(int) - BACKGROUND).sum(-1) > 30  # [112, 112]
            rows, columns = drawn.nonzero()
            quadrants = set(2 * (rows >= 56) + (columns >= 56))
            assert quadrants == {item.quadrant}


@pytest.mark.parametrize("family", FAMILIES)
def test_consecutive_frames_never_stack_objects_in_one_quadrant(family):
    """The two frames of a temporal patch never put two objects in one merged token."""
    for seed in range(30):
        scene, *_ = build(family, seed, 32)
        stacked = [i for i in range(1, 32) if scene[i] and scene[i - 1] and scene[i].quadrant == scene[i - 1].quadrant]
        assert stacked == []


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
    from videoqa.lab.suite import main

    out = tmp_path / "demo.mp4"
    assert main([str(out), "--family", "retrieval", "--index", "3", "--frames", "8"]) == 0
    printed = capsys.readouterr()
    _, question, answer, *_ = build("retrieval", 2_000_003, 8)
    assert printed.out.strip() == question and printed.err.strip().endswith(f"expected answer: {answer}")
    assert out.read_bytes() == sample("retrieval", 2_000_003, 8).media
