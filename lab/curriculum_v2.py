"""What the demo model v2 trains on: suite v2 conversations for a Qwen3-VL-architecture model.

The model (:data:`SPEC_V2`) reads 128×128 frames as 4×4 merged tokens per pair of frames, each pair
after its time (``<3.2 seconds>``), so suite v2's evidence (:func:`videoqa.lab.suite_v2.evidence_tokens`
for :data:`~videoqa.lab.suite_v2.DEMO_GRID`) is exactly where the model's visual tokens are. The
training loop, the probe and the evidence-attention loss are :mod:`videoqa.lab.train`'s; this module
gives them examples and probe targets from suite v2 scenes.
"""

from __future__ import annotations

import dataclasses
import random

import torch

from videoqa.lab.suite import COLORS, SHAPES
from videoqa.lab.suite_v2 import DEMO_GRID, Question, Scene, build, evidence_tokens, questions_about, render, starts
from videoqa.worker.model import tiny
from videoqa.worker.types import DecodedMedia

#: 4 layers, hidden 192, 6/2 heads of 32, a 4-block 128-wide tower whose blocks 1 and 2 feed
#: DeepStack; frames resized to 128×128 whatever their count (16 merged tokens per frame at most,
#: up to 1024 frames at that size), so every pair of frames is 4×4 merged tokens.
SPEC_V2 = tiny.TinySpec(
    "qwen3_vl",
    layers=4,
    hidden=192,
    heads=6,
    kv_heads=2,
    head_dim=32,
    intermediate=576,
    vision_hidden=128,
    vision_depth=4,
    vision_heads=2,
    deepstack=(1, 2),
    image_size=128,
    video_pixels=1024 * 128 * 128,
    frame_tokens=DEMO_GRID.per_patch,
)
SIZE = 128
FPS = 2.0
COLOR_NAMES = list(COLORS)


def media_of(scene: Scene, seed: int, size: int = SIZE) -> DecodedMedia:
    return DecodedMedia.from_array(render(scene, size, seed), fps=FPS)


def question_of(family: str, seed: int, frames: int) -> tuple[Scene, str, str, list[str]]:
    """(scene, question, answer, aliases) of a validation item."""
    scene, question = build(family, seed, frames)
    return scene, question.text, question.answer, []


def conversation(scene: Scene, family: str, first_text: str, turns: int, rng: random.Random) -> list[Question]:
    """The family's question first, then up to ``turns - 1`` other questions the scene answers.

    No counting follow-ups: a background scene's shots of one shape vary in length and size (4 to
    36 tokens each), and the counting question's attention share only carries the count when every
    counted shot is the same amount of evidence, as a counting question's own shots are."""
    questions = questions_about(scene, rng)
    first = next((q for q in questions if q.text == first_text), None) or next(
        q for q in questions if q.family == family
    )
    others = [q for q in questions if q is not first and q.family != "counting"]
    rng.shuffle(others)
    return [first, *others[: turns - 1]]


def probe_targets(scene: Scene, patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour and shape class per merged token and frame of its pair, [patches · 16, 2] each, in
    the tower's token order: the thing covering most of the token's region in that frame, or the
    extra class (nothing there)."""
    grid = DEMO_GRID
    colors = torch.full((patches * grid.per_patch, grid.frames), len(COLOR_NAMES))
    shapes = torch.full((patches * grid.per_patch, grid.frames), len(SHAPES))
    for shot, first in zip(scene, starts(scene), strict=True):
        for k in range(shot.frames):
            frame = first + k
            best: dict[int, tuple[float, int, int]] = {}
            for thing in shot.things:
                x0, y0, x1, y1 = thing.box(k)
                for cell in range(grid.per_patch):
                    row, column = divmod(cell, grid.columns)
                    cx0, cy0 = column / grid.columns, row / grid.rows
                    overlap = max(0.0, min(x1, cx0 + 1 / grid.columns) - max(x0, cx0)) * max(
                        0.0, min(y1, cy0 + 1 / grid.rows) - max(y0, cy0)
                    )
                    # at least a fifth of the token's region: a sliver is not "under" the token
                    if overlap * grid.per_patch > 0.2 and overlap > best.get(cell, (0.0, 0, 0))[0]:
                        best[cell] = (overlap, COLOR_NAMES.index(thing.color), SHAPES.index(thing.shape))
            token0 = (frame // grid.frames) * grid.per_patch
            for cell, (_, color, shape) in best.items():
                colors[token0 + cell, frame % grid.frames] = color
                shapes[token0 + cell, frame % grid.frames] = shape
    return colors, shapes


def answer_shown(scene: Scene, question: Question) -> Question:
    """``question`` with only the evidence that shows its answer: for ordering, the shot of the
    shape that comes first (the answer), not the other named one."""
    kept = tuple((i, j) for i, j in question.evidence if scene[i].things[j].shape == question.answer)
    return dataclasses.replace(question, evidence=kept)


def example(
    adapter,
    family: str,
    seed: int,
    frames: int,
    size: int,
    turns: int,
    count_sink: float = 0.0,
    order_first: bool = False,
):
    """A suite v2 video of ``family`` and a conversation about it (see ``train.example``), with
    each question's evidence: the tokens :func:`evidence_tokens` names, at their prompt positions.
    ``order_first``: an ordering question's head looks at the answer's shot only (the earlier of
    the two, :func:`answer_shown`), so that the head itself picks which comes first; both shots
    stay its ``needed`` tokens."""
    from videoqa.lab.oracle import evidence_positions
    from videoqa.lab.train import Evidence, Example

    scene, question = build(family, seed, frames)
    rng = random.Random(seed)
    asked = conversation(scene, family, question.text, turns, rng)
    prompt = adapter.prepare(media_of(scene, seed, size), asked[0].text)
    ids, supervised = list(prompt.input_ids), [False] * len(prompt.input_ids)
    evidence = []
    end = adapter.tokenizer.eos_token_id
    for turn, item in enumerate(asked):
        tokens = evidence_positions(prompt.layout, tuple(evidence_tokens(scene, item)), DEMO_GRID.per_patch).tolist()
        if item.family == "ordering" and order_first:
            first = evidence_tokens(scene, answer_shown(scene, item))
            looked = evidence_positions(prompt.layout, tuple(first), DEMO_GRID.per_patch).tolist()
            evidence.append(Evidence(len(ids) - 1, looked, needed=tokens))
        elif item.family != "counting":
            evidence.append(Evidence(len(ids) - 1, tokens))
        elif count_sink > 0:
            count = int(item.answer)
            evidence.append(Evidence(len(ids) - 1, tokens, count / (count + count_sink)))
        reply = adapter.encode_text(item.answer)
        ids += reply
        supervised += [True] * len(reply)
        following = [end]
        if turn + 1 < len(asked):
            following = adapter.encode_text(adapter.followup_text(asked[turn + 1].text))
            assert following[0] == end, "the follow-up text starts by closing the answer"
        ids += following
        supervised += [True] + [False] * (len(following) - 1)
    continued = adapter.text_positions(len(prompt.input_ids), len(ids) - len(prompt.input_ids), prompt.rope_delta)
    positions = torch.cat([prompt.position_ids, continued], dim=-1)[:, 0]
    patches = len(prompt.layout.frame_spans)
    return Example(
        prompt.inputs, ids, supervised, probe_targets(scene, patches), evidence, positions, prompt.layout.frame_spans
    )
