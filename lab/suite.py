"""A synthetic multi-frame video-QA suite: seeded scenes of coloured shapes, encoded to real H.264.

Each video is ``T`` frames (8 to 64); a frame shows one object (a colour and a shape in one of the
frame's four quadrants, with jitter; some objects move from one quadrant to the next between
frames) or is a distractor (noise, no object). Question families mirror MileBench's diagnostic and
temporal groups, with short, exactly checkable answers:

- ``needle``: what colour is the <shape> (the only frame that shows that shape: the needle);
- ``retrieval``: which shape is <colour> (the only frame that shows that colour);
- ``ordering``: which appears first, the <shape a> or the <shape b> (each shown once; answer: the
  earlier one's shape);
- ``counting``: how many frames show a <shape>;
- ``state_change``: what colour does the <shape> turn into;
- ``last_frames``: what shape is in the last frame.

Questions name content, never a frame number: a model whose only clock is rotary positions (as
here) cannot count frames from the start (see docs/quality.md). Splits come from disjoint seed
ranges: ``train`` (0…), ``validation`` (10⁶…), ``test`` (2·10⁶…).
"""

from __future__ import annotations

import io
import itertools
import math
import random
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from PIL import Image, ImageDraw

from videoqa.lab.sample import Sample
from videoqa.worker.types import MediaKind

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "white": (240, 240, 240),
    "orange": (240, 140, 30),
    "purple": (150, 60, 200),
}
SHAPES = ("circle", "square", "triangle", "star")
FAMILIES = ("needle", "retrieval", "ordering", "counting", "state_change", "last_frames")
SPLITS = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
BACKGROUND = (70, 70, 80)
#: Counting questions ask about 1 to MAX_COUNT frames.
MAX_COUNT = 5
#: Object centres, as fractions of the frame: the middle of one quadrant, plus up to ``JITTER``.
#: An object (radius 0.18 of the frame) stays inside its quadrant, so at the demo model's 2×2
#: merged tokens per frame it is seen by one token, not smeared over up to four.
QUADRANTS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))
JITTER = 0.06
RADIUS = 0.18


@dataclass(frozen=True)
class Item:
    """What one frame shows: an object, or nothing (a distractor frame)."""

    color: str
    shape: str
    x: float  # centre, as a fraction of the width
    y: float

    @property
    def quadrant(self) -> int:
        """Which quadrant holds the centre: 0 top left, 1 top right, 2 bottom left, 3 bottom right."""
        return 2 * (self.y >= 0.5) + (self.x >= 0.5)


def _place(rng: random.Random, quadrant: int) -> tuple[float, float]:
    x, y = QUADRANTS[quadrant]
    return x + rng.uniform(-JITTER, JITTER), y + rng.uniform(-JITTER, JITTER)


Scene = list[Item | None]


def _random_item(rng: random.Random, avoid: set[tuple[str, str]] = frozenset(), **fixed) -> Item:
    while True:
        color = fixed.get("color") or rng.choice(list(COLORS))
        shape = fixed.get("shape") or rng.choice(SHAPES)
        if (color, shape) not in avoid:
            return Item(color, shape, *_place(rng, rng.randrange(len(QUADRANTS))))


def _background_scene(rng: random.Random, frames: int, avoid: set[tuple[str, str]], distractors: float = 0.2) -> Scene:
    """Random objects (about a fifth of the frames distractors), some moving on to a neighbouring
    quadrant, none in ``avoid``."""
    scene: Scene = []
    for _ in range(frames):
        if rng.random() < distractors:
            scene.append(None)
            continue
        previous = scene[-1] if scene else None
        if previous is not None and rng.random() < 0.3:  # the same object, moved to the next quadrant
            item = Item(previous.color, previous.shape, *_place(rng, previous.quadrant ^ rng.choice((1, 2))))
        else:
            item = _random_item(rng, avoid)
        scene.append(item)
    return scene


def _slots(rng: random.Random, frames: int, count: int) -> list[int]:
    return sorted(rng.sample(range(frames), count))


def build(family: str, seed: int, frames: int) -> tuple[Scene, str, str, float | None, list[str]]:
    """A scene and its question: ``(scene, question, answer, needle, aliases)``."""
    rng = random.Random(f"{family}:{seed}:{frames}")
    scene, *question = _compose(family, rng, frames)
    return _separate(scene, rng), *question


def _separate(scene: Scene, rng: random.Random) -> Scene:
    """Move objects so that consecutive frames never show theirs in the same quadrant (positions
    only; no question asks about them). Qwen's temporal patch merges frames two by two into one
    token grid: two objects stacked in one token would make every question about either of them
    a question about which of the token's two frames holds what."""
    for i in range(1, len(scene)):
        before, item = scene[i - 1], scene[i]
        if before is not None and item is not None and item.quadrant == before.quadrant:
            quadrant = rng.choice([q for q in range(len(QUADRANTS)) if q != before.quadrant])
            scene[i] = Item(item.color, item.shape, *_place(rng, quadrant))
    return scene


def _compose(family: str, rng: random.Random, frames: int) -> tuple[Scene, str, str, float | None, list[str]]:
    last = frames - 1
    if family == "needle":
        shape = rng.choice(SHAPES)
        scene = _background_scene(rng, frames, {(c, shape) for c in COLORS})
        k = rng.randrange(frames)
        scene[k] = _random_item(rng, shape=shape)
        return scene, f"What color is the {shape}?", scene[k].color, k / last, []
    if family == "retrieval":
        color = rng.choice(list(COLORS))
        scene = _background_scene(rng, frames, {(color, s) for s in SHAPES})
        k = rng.randrange(frames)
        scene[k] = _random_item(rng, color=color)
        return scene, f"Which shape is {color}?", scene[k].shape, k / last, []
    if family == "ordering":
        a, b = rng.sample(SHAPES, 2)
        others = [s for s in SHAPES if s not in (a, b)]
        scene = [None if rng.random() < 0.2 else _random_item(rng, shape=rng.choice(others)) for _ in range(frames)]
        i, j = _slots(rng, frames, 2)
        scene[i], scene[j] = _random_item(rng, shape=a), _random_item(rng, shape=b)
        named = (a, b) if rng.random() < 0.5 else (b, a)
        return scene, f"Which appears first, the {named[0]} or the {named[1]}?", a, None, []
    if family == "counting":
        shape = rng.choice(SHAPES)
        others = [s for s in SHAPES if s != shape]
        scene = [None if rng.random() < 0.2 else _random_item(rng, shape=rng.choice(others)) for _ in range(frames)]
        count = rng.randint(1, min(MAX_COUNT, frames))
        for k in _slots(rng, frames, count):
            scene[k] = _random_item(rng, shape=shape)
        return scene, f"How many frames show a {shape}?", str(count), None, []
    if family == "state_change":
        shape = rng.choice(SHAPES)
        before, after = rng.sample(list(COLORS), 2)
        others = [s for s in SHAPES if s != shape]
        scene = [None if rng.random() < 0.2 else _random_item(rng, shape=rng.choice(others)) for _ in range(frames)]
        switch = rng.randint(1, last)
        appearances = _slots(rng, switch, min(switch, 2)) + [
            k + switch for k in _slots(rng, frames - switch, min(frames - switch, 2))
        ]
        for k in appearances:
            scene[k] = _random_item(rng, shape=shape, color=before if k < switch else after)
        return scene, f"What color does the {shape} turn into?", after, switch / last, []
    if family == "last_frames":
        scene = _background_scene(rng, frames, set())
        scene[last] = _random_item(rng)
        return scene, "What shape is in the last frame?", scene[last].shape, 1.0, []
    raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")


@dataclass(frozen=True)
class Question:
    """A question a scene answers, and the frames that hold its evidence."""

    family: str
    text: str
    answer: str
    evidence: tuple[int, ...]


def questions_about(scene: Scene, rng: random.Random) -> list[Question]:
    """Every question of every family that ``scene`` answers unambiguously (ordering: one random
    pair of shapes shown once each). A training script uses these to ask several questions per
    video. ``evidence`` is where the answer is read: for ordering, the earlier frame only."""
    shown = [(i, item) for i, item in enumerate(scene) if item is not None]
    found: list[Question] = []
    for shape in SHAPES:
        frames = [(i, item) for i, item in shown if item.shape == shape]
        where = tuple(i for i, _ in frames)
        if len(frames) == 1:
            found.append(Question("needle", f"What color is the {shape}?", frames[0][1].color, where))
        if 1 <= len(frames) <= MAX_COUNT:
            found.append(Question("counting", f"How many frames show a {shape}?", str(len(frames)), where))
        colors = [item.color for _, item in frames]
        changes = sum(a != b for a, b in itertools.pairwise(colors))
        if changes == 1 and len(set(colors)) == 2:
            after = tuple(i for i, item in frames if item.color == colors[-1])
            found.append(Question("state_change", f"What color does the {shape} turn into?", colors[-1], after))
    for color in COLORS:
        frames = [(i, item) for i, item in shown if item.color == color]
        if len(frames) == 1:
            found.append(Question("retrieval", f"Which shape is {color}?", frames[0][1].shape, (frames[0][0],)))
    if scene[-1] is not None:
        found.append(Question("last_frames", "What shape is in the last frame?", scene[-1].shape, (len(scene) - 1,)))
    once = {shape: hits[0] for shape in SHAPES if len(hits := [i for i, item in shown if item.shape == shape]) == 1}
    pairs = [(a, b) for a in once for b in once if once[a] < once[b]]
    if pairs:
        a, b = rng.choice(pairs)
        named = (a, b) if rng.random() < 0.5 else (b, a)
        question = f"Which appears first, the {named[0]} or the {named[1]}?"
        found.append(Question("ordering", question, a, (once[a],)))
    return found


def render(scene: Scene, size: int, seed: int = 0) -> np.ndarray:
    """Frames [T, size, size, 3] uint8: each item drawn on a plain background; distractor frames
    are noise with no object."""
    rng = np.random.default_rng(seed)
    frames = []
    for item in scene:
        if item is None:
            noise = rng.integers(40, 110, size=(size, size, 3), dtype=np.uint8)
            frames.append(noise)
            continue
        image = Image.new("RGB", (size, size), BACKGROUND)
        draw = ImageDraw.Draw(image)
        r = size * RADIUS
        cx, cy = item.x * size, item.y * size
        color = COLORS[item.color]
        if item.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
        elif item.shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
        elif item.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
        else:  # a five-pointed star
            points = []
            for k in range(10):
                radius = r if k % 2 == 0 else r * 0.45
                angle = math.pi * k / 5 - math.pi / 2
                points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
            draw.polygon(points, fill=color)
        frames.append(np.asarray(image))
    return np.stack(frames)


def encode_mp4(frames: np.ndarray, fps: int = 4) -> bytes:
    """H.264 in MP4 via PyAV (frames [T, H, W, 3] uint8, even sizes), near-lossless."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def sample(family: str, seed: int, frames: int, size: int = 112) -> Sample:
    scene, question, answer, needle, aliases = build(family, seed, frames)
    video = encode_mp4(render(scene, size, seed))
    return Sample(
        f"{family}-{frames}-{seed}", family, question, answer, MediaKind.VIDEO, video, frames, needle, aliases
    )


def generate(
    split: str, count: int, frames: tuple[int, ...] = (8, 16), size: int = 112, families: tuple[str, ...] = FAMILIES
) -> list[Sample]:
    """``count`` samples of a split, cycling through families and frame counts; deterministic."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    base = SPLITS[split]
    return [
        sample(families[i % len(families)], base + i, frames[(i // len(families)) % len(frames)], size)
        for i in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    """Write one suite video; print its question on stdout and the expected answer on stderr."""
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Write one synthetic suite video and print its question.")
    parser.add_argument("out", type=Path, help="where to write the MP4")
    parser.add_argument("--family", default="needle", choices=FAMILIES)
    parser.add_argument("--split", default="test", choices=list(SPLITS))
    parser.add_argument("--index", type=int, default=0, help="sample index within the split")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args(argv)
    item = sample(args.family, SPLITS[args.split] + args.index, args.frames, args.size)
    args.out.write_bytes(item.media)
    print(item.question)
    print(f"{args.out}: {args.frames} frames; expected answer: {item.answer}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
