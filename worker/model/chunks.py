"""How a prompt with media is split into prefill chunks.

A chunk is a range of prompt tokens that one forward runs. Chunk boundaries fall between frame
spans (whole temporal patches for Qwen, whole frames for LLaVA-OneVision): the first chunk holds
the text before the video and the first spans, the last one the last spans and the text after
the video; text between spans (Qwen3-VL's frame times) goes with the span after it. A chunk
holds at most ``frames`` frames and, when ``tokens`` is set, at most that many visual tokens, but
always at least one span.
"""

from __future__ import annotations

from dataclasses import dataclass

from videoqa.worker.model.families import TokenLayout


@dataclass(frozen=True)
class Chunking:
    """Prefill chunk size: ``frames`` per chunk (0: the whole video in one chunk) and an optional
    bound on the visual ``tokens`` of a chunk (0: none); and ``slack``: between chunks, a
    progressive compression keeps up to ``slack`` times the entries the prefill's final budget
    allows (the last step keeps exactly the budget). 1 holds the least memory (the budget plus one
    chunk); more lets the last step choose among more of the video (see docs/pruning.md).
    ``step_tokens``: a chunk's tokens run in forwards of at most this many (0: one forward per
    chunk), the compression still after the whole chunk: the scheduler runs other sessions' decode
    steps between them, so a running answer waits for one step, not one chunk."""

    frames: int = 0
    tokens: int = 0
    slack: float = 2.0
    step_tokens: int = 0

    @property
    def whole(self) -> bool:
        return self.frames <= 0 and self.tokens <= 0


@dataclass(frozen=True)
class Chunk:
    """Prompt tokens ``start`` to ``end`` (exclusive), holding frame spans ``first_span`` to
    ``end_span`` (exclusive) whole."""

    start: int
    end: int
    first_span: int
    end_span: int

    @property
    def spans(self) -> tuple[int, int]:
        return self.first_span, self.end_span


def steps_of(chunk: Chunk, step_tokens: int) -> list[tuple[int, int]]:
    """The forwards that run ``chunk``: token ranges of at most ``step_tokens`` (0: one forward),
    never of one token (a one-token forward is a decode step to the attention hooks: a last piece
    of one token joins the piece before it)."""
    step = max(2, step_tokens) if step_tokens > 0 else chunk.end - chunk.start
    pieces = [(a, min(chunk.end, a + step)) for a in range(chunk.start, chunk.end, max(1, step))]
    if len(pieces) > 1 and pieces[-1][1] - pieces[-1][0] == 1:
        pieces[-2:] = [(pieces[-2][0], pieces[-1][1])]
    return pieces or [(chunk.start, chunk.end)]


def plan_chunks(layout: TokenLayout, chunking: Chunking) -> list[Chunk]:
    """The chunks that cover ``layout``'s prompt (one when ``chunking`` is whole or the video fits)."""
    spans = layout.frame_spans
    if chunking.whole or not spans:
        return [Chunk(0, layout.prompt_length, 0, len(spans))]
    per_chunk = max(1, chunking.frames // max(1, layout.frames_per_span)) if chunking.frames > 0 else len(spans)
    groups: list[tuple[int, int]] = []
    first = 0
    while first < len(spans):
        end = first + 1
        tokens = spans[first][1] - spans[first][0]
        while end < len(spans) and end - first < per_chunk:
            more = spans[end][1] - spans[end][0]
            if chunking.tokens > 0 and tokens + more > chunking.tokens:
                break
            tokens += more
            end += 1
        groups.append((first, end))
        first = end
    chunks = []
    for index, (a, b) in enumerate(groups):
        start = chunks[-1].end if chunks else 0  # (text between spans, e.g. a frame's time, joins the next)
        stop = layout.prompt_length if index == len(groups) - 1 else spans[b - 1][1]
        chunks.append(Chunk(start, stop, a, b))
    return chunks
