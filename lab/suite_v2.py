"""Suite v2: synthetic videos with the redundancy of real footage, where good pruning can keep everything.

Real video sampled at 1-2 fps repeats most of its content: a shot lasts several frames, things move
a little between them, objects cover many tokens. Suite v1 had the opposite (one object per frame,
one token per object, nothing repeated), so no method could keep the evidence at 20%. Here:

- a video is a sequence of **shots** of 2 to 8 frames (even lengths, so that a shot fills whole
  temporal patches: Qwen merges frames two by two), each on its own textured background, showing
  nothing (a fifth of them), one object, or two;
- an object (a colour and a shape) **moves gradually** through its shot, and spans 2×2 to 3×3
  merged tokens of a 4×4 grid per frame pair;
- questions name content, as in v1: ``needle``, ``retrieval``, ``ordering``, ``counting`` (of
  shots), ``state_change`` and ``last_frames``; every answer is re-derivable from the scene
  (:func:`questions_about`). The shots a counting question counts are all alike (one temporal
  patch, the thing still on 2×2 tokens), so each is the same amount of evidence;
- the **evidence** of a question is the set of merged tokens that show its answer's objects
  (:func:`evidence_tokens`, for a model's token grid); by construction it is at most
  :data:`MAX_EVIDENCE_SHARE` of the video's visual tokens, so a 20% budget can keep all of it, and
  an ``oracle`` that keeps exactly it bounds what pruning can reach.

Videos are 16 to 256 frames at :data:`FPS` frames a second. Splits come from disjoint seed ranges
as in v1 (``train`` 0…, ``validation`` 10⁶…, ``test`` 2·10⁶…), and generation is deterministic per
seed.

**Time questions** (:data:`TIME_FAMILIES`) are for models whose prompt carries each frame's time
(Qwen3-VL and Qwen3.5 write ``<12.2 seconds>`` before each temporal patch): ``time_at`` ("What
shape is on screen at 12 seconds?", a one-object shot covers that second ±0.5 s, so any frame time
within that tolerance has the same answer) and ``time_when`` ("When does the red square appear?",
answered in whole seconds from the shot's first frame, correct within ±1 s:
:data:`WHEN_TOLERANCE`). They are opt-in (``families=ALL_FAMILIES``): a model that is not shown the
clock cannot answer them.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from videoqa.lab.sample import Sample
from videoqa.lab.suite import COLORS, SHAPES, SPLITS, encode_mp4
from videoqa.worker.types import MediaKind

FAMILIES = ("needle", "retrieval", "ordering", "counting", "state_change", "last_frames")
#: Questions about time, for models that read each frame's time in their prompt.
TIME_FAMILIES = ("time_at", "time_when")
ALL_FAMILIES = FAMILIES + TIME_FAMILIES
#: Frames a second of every suite v2 video (frame i is at i / FPS seconds).
FPS = 2
#: A ``time_when`` answer (seconds) is right within this many seconds of the shot's start.
WHEN_TOLERANCE = 1.0
#: Shot lengths in frames (whole temporal patches of two frames).
SHOT_FRAMES = (2, 4, 6, 8)
#: Object radius, as a fraction of the frame side: 0.4 across, 2 to 3 merged tokens of a 4×4 grid
#: on each axis (under 0.5 even while it moves: never more than 3).
RADIUS = 0.2
#: Most an object moves per frame, as a fraction of the frame side.
SPEED = 0.025
#: Share of shots with no object, and of shots with two.
EMPTY_SHOTS = 0.2
TWO_OBJECTS = 0.25
#: Counting questions ask about 1 to MAX_COUNT shots.
MAX_COUNT = 4
#: Merged tokens a counted shot covers (one temporal patch, its thing still on 2×2 tokens).
COUNTED_TOKENS = 4
#: The evidence of any question is at most this share of the visual tokens (for :data:`DEMO_GRID`).
MAX_EVIDENCE_SHARE = 0.15
#: Frame counts the suite draws from.
FRAME_COUNTS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class TokenGrid:
    """How a model lays a video out in visual tokens: ``frames`` frames per temporal patch, each
    patch ``rows`` × ``columns`` merged tokens in row-major order, patches in time order."""

    frames: int = 2
    rows: int = 4
    columns: int = 4

    @property
    def per_patch(self) -> int:
        return self.rows * self.columns


#: The demo model's grid (128×128 frames, 16-pixel patches merged 2×2, frames paired).
DEMO_GRID = TokenGrid(2, 4, 4)


@dataclass(frozen=True)
class Thing:
    """An object in a shot: its colour and shape, where its centre starts (fractions of the frame)
    and how far it moves per frame."""

    color: str
    shape: str
    x: float
    y: float
    dx: float
    dy: float

    def at(self, frame: int) -> tuple[float, float]:
        """Centre at the shot's ``frame``-th frame."""
        return self.x + frame * self.dx, self.y + frame * self.dy

    def box(self, frame: int) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) at the shot's ``frame``-th frame, fractions of the frame."""
        x, y = self.at(frame)
        return x - RADIUS, y - RADIUS, x + RADIUS, y + RADIUS


@dataclass(frozen=True)
class Shot:
    """``frames`` frames of ``things`` moving over one background (``texture`` seeds it)."""

    frames: int
    things: tuple[Thing, ...]
    texture: int


Scene = tuple[Shot, ...]


@dataclass(frozen=True)
class Question:
    """A question a scene answers: the family, text, answer, and the evidence (per shot index, the
    things in it that show the answer)."""

    family: str
    text: str
    answer: str
    evidence: tuple[tuple[int, int], ...]


def frame_count(scene: Scene) -> int:
    return sum(shot.frames for shot in scene)


def starts(scene: Scene) -> list[int]:
    """The first frame of every shot."""
    out, first = [], 0
    for shot in scene:
        out.append(first)
        first += shot.frames
    return out


# --- scenes -----------------------------------------------------------------------------------


def _thing(rng: random.Random, color: str, shape: str, side: int | None = None) -> Thing:
    """A thing whose whole path stays inside the frame. ``side`` 0/1: one of two things side by
    side, centred in the left/right half and moving only up or down, so they never overlap."""
    low, high = RADIUS + 8 * SPEED, 1 - RADIUS - 8 * SPEED
    speed = rng.uniform(0.3, 1.0) * SPEED
    if side is not None:
        return Thing(color, shape, 0.25 + 0.5 * side, rng.uniform(low, high), 0.0, rng.choice((-1, 1)) * speed)
    angle = rng.uniform(0, 2 * math.pi)
    x, y = rng.uniform(low, high), rng.uniform(low, high)
    return Thing(color, shape, x, y, speed * math.cos(angle), speed * math.sin(angle))


def _shot(rng: random.Random, pairs: list[tuple[str, str]], frames: int | None = None) -> Shot:
    """A shot showing ``pairs`` (colour, shape), at most two, side by side when two."""
    frames = frames or rng.choice(SHOT_FRAMES)
    if len(pairs) == 2:
        things = tuple(_thing(rng, c, s, side) for side, (c, s) in enumerate(pairs))
    else:
        things = tuple(_thing(rng, c, s) for c, s in pairs)
    return Shot(frames, things, rng.randrange(1 << 30))


def _still(rng: random.Random, color: str, shape: str) -> Shot:
    """A counted shot: one temporal patch long, its thing still and centred on a corner of the
    token grid, so that it covers exactly :data:`COUNTED_TOKENS` merged tokens. Every counted shot
    is the same amount of evidence: a count is a number of equal groups, not a number of tokens."""
    corners = [k / DEMO_GRID.columns for k in range(1, DEMO_GRID.columns)]
    thing = Thing(color, shape, rng.choice(corners), rng.choice(corners), 0.0, 0.0)
    return Shot(DEMO_GRID.frames, (thing,), rng.randrange(1 << 30))


def _filler(rng: random.Random, allowed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What a background shot shows: nothing, one or two (colour, shape) pairs from ``allowed``."""
    roll = rng.random()
    if roll < EMPTY_SHOTS or not allowed:
        return []
    count = 2 if roll > 1 - TWO_OBJECTS and len(allowed) > 1 else 1
    return rng.sample(allowed, count)


def _pairs(colors=tuple(COLORS), shapes=SHAPES) -> list[tuple[str, str]]:
    return [(c, s) for c in colors for s in shapes]


def _background(rng: random.Random, frames: int, allowed: list[tuple[str, str]]) -> list[Shot]:
    """Shots adding up to ``frames`` frames (the last one cut to fit) showing only ``allowed``."""
    shots, total = [], 0
    while total < frames:
        length = min(rng.choice(SHOT_FRAMES), frames - total)
        shots.append(_shot(rng, _filler(rng, allowed), length))
        total += length
    return shots


def _evidence_patches(frames: int) -> int:
    """How many temporal patches may show evidence so that it stays within
    :data:`MAX_EVIDENCE_SHARE` of the visual tokens (a thing covers at most 3×3 tokens of a 4×4
    grid in a patch: 0.4 of the frame across plus under 0.05 of motion in two frames)."""
    patches = frames // DEMO_GRID.frames
    return int(MAX_EVIDENCE_SHARE * patches * DEMO_GRID.per_patch) // 9


def _evidence_frames(frames: int, shots: int) -> int:
    """How long each of ``shots`` evidence shots may be (frames) within that bound."""
    per_shot = max(1, _evidence_patches(frames) // shots)
    return min(max(SHOT_FRAMES), DEMO_GRID.frames * per_shot)


def _insert(rng: random.Random, shots: list[Shot], special: list[Shot], apart: bool = False) -> tuple[Scene, list[int]]:
    """``shots`` with ``special`` shots put in at random places, in the order given (``apart``: no
    two of them adjacent); the total length is kept by trimming background shots. Returns the
    scene and the special shots' indices."""
    frames = sum(s.frames for s in shots)
    extra = sum(s.frames for s in special)
    background = list(shots)
    while sum(s.frames for s in background) > frames - extra and background:  # make room
        victim = rng.randrange(len(background))
        shot = background[victim]
        if shot.frames > 2:
            background[victim] = Shot(shot.frames - 2, shot.things, shot.texture)
        else:
            del background[victim]
    need = len(special)
    while apart and len(background) < need - 1:  # room to keep them apart: split a background shot
        longest = max(range(len(background)), key=lambda i: background[i].frames)
        shot = background[longest]
        if shot.frames < 4:
            raise AssertionError("no background shot left to split")
        half = 2 * (shot.frames // 4)
        background[longest : longest + 1] = [
            Shot(half, shot.things, shot.texture),
            Shot(shot.frames - half, shot.things, rng.randrange(1 << 30)),
        ]
    slots = len(background) + 1
    if apart:  # distinct slots: at least one background shot between any two
        positions = sorted(rng.sample(range(slots), need))
    else:
        positions = sorted(rng.sample(range(slots + need - 1), need))
        positions = [p - i for i, p in enumerate(positions)]
    scene: list[Shot] = []
    where = []
    special_iter = iter(special)
    for slot in range(slots):
        while positions and positions[0] == slot:
            positions.pop(0)
            where.append(len(scene))
            scene.append(next(special_iter))
        if slot < len(background):
            scene.append(background[slot])
    return tuple(scene), where


def build(family: str, seed: int, frames: int) -> tuple[Scene, Question]:
    """A scene of ``frames`` frames and its question of ``family`` (deterministic per arguments)."""
    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(ALL_FAMILIES)}")
    if frames < 16 or frames % DEMO_GRID.frames:
        raise ValueError(f"frames must be an even number of at least 16, not {frames}")
    rng = random.Random(f"v2:{family}:{seed}:{frames}")
    scene, question = _compose(family, rng, frames)
    if frame_count(scene) != frames:
        raise AssertionError(f"{family} scene has {frame_count(scene)} frames, not {frames}")
    return scene, question


def _compose(family: str, rng: random.Random, frames: int) -> tuple[Scene, Question]:
    length = _evidence_frames(frames, 1)
    if family == "needle":
        shape = rng.choice(SHAPES)
        color = rng.choice(list(COLORS))
        back = _background(rng, frames, _pairs(shapes=[s for s in SHAPES if s != shape]))
        scene, (k,) = _insert(rng, back, [_shot(rng, [(color, shape)], rng.choice(_upto(length)))])
        return scene, Question(family, f"What color is the {shape}?", color, ((k, 0),))
    if family == "retrieval":
        color = rng.choice(list(COLORS))
        shape = rng.choice(SHAPES)
        back = _background(rng, frames, _pairs(colors=[c for c in COLORS if c != color]))
        scene, (k,) = _insert(rng, back, [_shot(rng, [(color, shape)], rng.choice(_upto(length)))])
        return scene, Question(family, f"Which shape is {color}?", shape, ((k, 0),))
    if family == "ordering":
        a, b = rng.sample(SHAPES, 2)
        length = _evidence_frames(frames, 2)
        back = _background(rng, frames, _pairs(shapes=[s for s in SHAPES if s not in (a, b)]))
        special = [_shot(rng, [(rng.choice(list(COLORS)), s)], rng.choice(_upto(length))) for s in (a, b)]
        scene, (i, j) = _insert(rng, back, special)
        named = (a, b) if rng.random() < 0.5 else (b, a)
        return scene, Question(family, f"Which appears first, the {named[0]} or the {named[1]}?", a, ((i, 0), (j, 0)))
    if family == "counting":
        shape = rng.choice(SHAPES)
        tokens = frames // DEMO_GRID.frames * DEMO_GRID.per_patch
        count = rng.randint(1, min(MAX_COUNT, int(MAX_EVIDENCE_SHARE * tokens) // COUNTED_TOKENS))
        back = _background(rng, frames, _pairs(shapes=[s for s in SHAPES if s != shape]))
        special = [_still(rng, rng.choice(list(COLORS)), shape) for _ in range(count)]
        scene, where = _insert(rng, back, special, apart=True)
        return scene, Question(family, f"How many scenes show a {shape}?", str(count), tuple((k, 0) for k in where))
    if family == "state_change":
        shape = rng.choice(SHAPES)
        before, after = rng.sample(list(COLORS), 2)
        length = _evidence_frames(frames, 2)
        back = _background(rng, frames, _pairs(shapes=[s for s in SHAPES if s != shape]))
        special = [_shot(rng, [(c, shape)], rng.choice(_upto(length))) for c in (before, after)]
        scene, (i, j) = _insert(rng, back, special, apart=True)
        text = f"What color does the {shape} turn into?"
        return scene, Question(family, text, after, ((i, 0), (j, 0)))
    if family in TIME_FAMILIES:
        return _compose_time(family, rng, frames, length)
    # last_frames: the last shot shows one thing
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    back = _background(rng, frames, _pairs())
    last = _shot(rng, [(color, shape)], rng.choice(_upto(length)))
    back = _trim(back, frames - last.frames)
    scene = (*back, last)
    return scene, Question(family, "What shape is in the last frame?", shape, ((len(scene) - 1, 0),))


def _compose_time(family: str, rng: random.Random, frames: int, length: int) -> tuple[Scene, Question]:
    """A one-object shot of at least 4 frames among shots that never show its colour and shape
    together; ``time_at`` asks what is on screen one second into it, ``time_when`` when it starts."""
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    back = _background(rng, frames, [p for p in _pairs() if p != (color, shape)])
    shot = _shot(rng, [(color, shape)], rng.choice(tuple(f for f in _upto(length) if f >= 4) or (4,)))
    scene, (k,) = _insert(rng, back, [shot])
    question = next(q for q in time_questions(scene) if q.family == family and q.evidence == ((k, 0),))
    return scene, question


def time_questions(scene: Scene) -> list[Question]:
    """The time questions ``scene`` answers unambiguously, from the scene alone: ``time_at`` one
    second into every one-object shot of 4 frames or more (its frames cover that second ±0.5 s),
    ``time_when`` for every colour and shape shown together in exactly one shot."""
    found: list[Question] = []
    first = starts(scene)
    for i, shot in enumerate(scene):
        if len(shot.things) == 1 and shot.frames >= 2 * FPS:
            at = first[i] // FPS + 1
            text = f"What shape is on screen at {at} second{'s' if at != 1 else ''}?"
            found.append(Question("time_at", text, shot.things[0].shape, ((i, 0),)))
    shown: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i, shot in enumerate(scene):
        for j, thing in enumerate(shot.things):
            shown.setdefault((thing.color, thing.shape), []).append((i, j))
    for (color, shape), where in shown.items():
        if len(where) == 1:
            i, j = where[0]
            text = f"When does the {color} {shape} appear?"
            found.append(Question("time_when", text, str(first[i] // FPS), ((i, j),)))
    return found


def _upto(length: int) -> tuple[int, ...]:
    return tuple(f for f in SHOT_FRAMES if f <= length) or (SHOT_FRAMES[0],)


def _trim(shots: list[Shot], frames: int) -> list[Shot]:
    """The first shots, cut to add up to ``frames`` frames."""
    out, total = [], 0
    for shot in shots:
        if total >= frames:
            break
        length = min(shot.frames, frames - total)
        out.append(Shot(length, shot.things, shot.texture))
        total += length
    return out


# --- questions and evidence ----------------------------------------------------------------------


def questions_about(scene: Scene, rng: random.Random) -> list[Question]:
    """Every question of every family that ``scene`` answers unambiguously, re-derived from the
    scene alone (a training script asks several per video; tests check :func:`build`'s answer
    against it). Ordering: one random pair of shapes each shown in exactly one shot."""
    found: list[Question] = []
    shots_with = {s: [i for i, shot in enumerate(scene) if any(t.shape == s for t in shot.things)] for s in SHAPES}
    for shape, where in shots_with.items():
        things = [(i, j, t) for i in where for j, t in enumerate(scene[i].things) if t.shape == shape]
        if len(things) == 1:
            i, j, thing = things[0]
            found.append(Question("needle", f"What color is the {shape}?", thing.color, ((i, j),)))
        if (
            1 <= len(where) <= MAX_COUNT
            and len(things) == len(where)
            and all(b - a > 1 for a, b in itertools.pairwise(where))
        ):
            evidence = tuple((i, j) for i, j, _ in things)
            found.append(Question("counting", f"How many scenes show a {shape}?", str(len(where)), evidence))
        colors = [t.color for _, _, t in things]
        changes = sum(a != b for a, b in itertools.pairwise(colors))
        if len(things) == len(where) and changes == 1 and len(set(colors)) == 2:
            text = f"What color does the {shape} turn into?"
            found.append(Question("state_change", text, colors[-1], tuple((i, j) for i, j, _ in things)))
    for color in COLORS:
        things = [(i, j, t) for i, shot in enumerate(scene) for j, t in enumerate(shot.things) if t.color == color]
        if len(things) == 1:
            i, j, thing = things[0]
            found.append(Question("retrieval", f"Which shape is {color}?", thing.shape, ((i, j),)))
    if len(scene[-1].things) == 1:
        shape = scene[-1].things[0].shape
        found.append(Question("last_frames", "What shape is in the last frame?", shape, ((len(scene) - 1, 0),)))
    once = {
        s: where[0]
        for s, where in shots_with.items()
        if len(where) == 1 and sum(t.shape == s for t in scene[where[0]].things) == 1
    }
    pairs = [(a, b) for a in once for b in once if once[a] < once[b]]
    if pairs:
        a, b = rng.choice(pairs)
        named = (a, b) if rng.random() < 0.5 else (b, a)
        evidence = tuple(
            (once[s], next(j for j, t in enumerate(scene[once[s]].things) if t.shape == s)) for s in (a, b)
        )
        found.append(Question("ordering", f"Which appears first, the {named[0]} or the {named[1]}?", a, evidence))
    return found


def evidence_tokens(scene: Scene, question: Question, grid: TokenGrid = DEMO_GRID) -> list[int]:
    """Ordinals (in the video's visual tokens, in prompt order) of the merged tokens whose region
    an evidence thing's box overlaps in any frame of the token's temporal patch."""
    first = starts(scene)
    tokens: set[int] = set()
    for shot_index, thing_index in question.evidence:
        shot = scene[shot_index]
        thing = shot.things[thing_index]
        for k in range(shot.frames):
            patch = (first[shot_index] + k) // grid.frames
            tokens.update(patch * grid.per_patch + cell for cell in _cells(thing.box(k), grid))
    return sorted(tokens)


def _cells(box: tuple[float, float, float, float], grid: TokenGrid) -> list[int]:
    x0, y0, x1, y1 = box
    columns = range(max(0, math.floor(x0 * grid.columns)), min(grid.columns, math.ceil(x1 * grid.columns)))
    rows = range(max(0, math.floor(y0 * grid.rows)), min(grid.rows, math.ceil(y1 * grid.rows)))
    return [r * grid.columns + c for r in rows for c in columns]


def evidence_share(scene: Scene, question: Question, grid: TokenGrid = DEMO_GRID) -> float:
    """The share of the video's visual tokens that carry the evidence."""
    patches = math.ceil(frame_count(scene) / grid.frames)
    return len(evidence_tokens(scene, question, grid)) / (patches * grid.per_patch)


def needle_position(scene: Scene, question: Question) -> float | None:
    """Where the evidence sits (the middle of its last shot, as a fraction of the video), for the
    position buckets; ``None`` for questions about several places (counting)."""
    if question.family in ("counting", "ordering"):
        return None
    shot = max(i for i, _ in question.evidence)
    middle = starts(scene)[shot] + scene[shot].frames / 2
    return min(1.0, middle / frame_count(scene))


# --- pixels ----------------------------------------------------------------------------------------


def _texture(seed: int, size: int) -> np.ndarray:
    """A muted, smooth random background [size, size, 3] (low-resolution noise, upsampled)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(45, 115, size=(4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    return np.asarray(image)


def _draw(draw: ImageDraw.ImageDraw, thing: Thing, frame: int, size: int) -> None:
    cx, cy = (v * size for v in thing.at(frame))
    r = RADIUS * size
    color = COLORS[thing.color]
    if thing.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif thing.shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=color)
    elif thing.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=color)
    else:
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = math.pi * k / 5 - math.pi / 2
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=color)


def render(scene: Scene, size: int = 128, seed: int = 0) -> np.ndarray:
    """Frames [T, size, size, 3] uint8: every shot's things over its background, with a little
    per-frame sensor noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for shot in scene:
        background = _texture(shot.texture, size)
        for k in range(shot.frames):
            image = Image.fromarray(background.copy())
            draw = ImageDraw.Draw(image)
            for thing in shot.things:
                _draw(draw, thing, k, size)
            pixels = np.asarray(image).astype(np.int16) + rng.integers(-6, 7, size=(size, size, 3))
            frames.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return np.stack(frames)


def sample(family: str, seed: int, frames: int, size: int = 128) -> Sample:
    """One suite item: the encoded video (2 fps), the question, its answer and its evidence."""
    scene, question = build(family, seed, frames)
    video = encode_mp4(render(scene, size, seed), fps=FPS)
    return Sample(
        f"v2-{family}-{frames}-{seed}",
        family,
        question.text,
        question.answer,
        MediaKind.VIDEO,
        video,
        frames,
        needle_position(scene, question),
        evidence=tuple(evidence_tokens(scene, question)),
        tolerance=WHEN_TOLERANCE if family == "time_when" else None,
    )


def generate(
    split: str,
    count: int,
    frames: tuple[int, ...] = (16, 64),
    size: int = 128,
    families: tuple[str, ...] = FAMILIES,
) -> list[Sample]:
    """``count`` samples of a split, cycling through families and frame counts; deterministic."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    base = SPLITS[split]
    return [
        sample(families[i % len(families)], base + i, frames[(i // len(families)) % len(frames)], size)
        for i in range(count)
    ]


def share_table(seeds: int = 60, frames: tuple[int, ...] = FRAME_COUNTS) -> str:
    """Markdown: the mean (and largest) evidence share per family and frame count over ``seeds``."""
    lines = ["| frames | " + " | ".join(f.replace("_", " ") for f in ALL_FAMILIES) + " |"]
    lines.append("|---" * (len(ALL_FAMILIES) + 1) + "|")
    for count in frames:
        cells = []
        for family in ALL_FAMILIES:
            shares = [evidence_share(*build(family, seed, count)) for seed in range(seeds)]
            cells.append(f"{sum(shares) / len(shares):.1%} (max {max(shares):.1%})")
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m videoqa.lab.suite_v2 demo.mp4``: write one video and print its question;
    ``--shares``: print the evidence-share table instead."""
    import argparse
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Suite v2: write one video, or print the evidence shares.")
    parser.add_argument("out", type=Path, nargs="?", help="where to write the MP4")
    parser.add_argument("--family", default="needle", choices=ALL_FAMILIES)
    parser.add_argument("--split", default="test", choices=list(SPLITS))
    parser.add_argument("--index", type=int, default=0, help="sample index within the split")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--shares", action="store_true", help="print the evidence share per family and frame count")
    args = parser.parse_args(argv)
    if args.shares or args.out is None:
        print(share_table())
        return 0
    item = sample(args.family, SPLITS[args.split] + args.index, args.frames)
    args.out.write_bytes(item.media)
    print(item.question)
    print(f"{args.out}: {args.frames} frames; expected answer: {item.answer}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
