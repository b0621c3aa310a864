"""A prompt with its visual tokens reduced before the language model, at their original positions.

:func:`reduce_steps` runs the vision tower over the prompt's frames (a few spans at a time,
yielding between them so that the worker decodes other sessions' tokens there), asks the
reduction method which tokens to keep, and returns a :class:`~videoqa.worker.model.families.
PreparedPrompt` that holds only those: its ``input_ids`` without the dropped placeholders, the
kept tokens' features precomputed (``features``, DeepStack rows with them), and the
**original positions** of every token it keeps (``position_ids`` at the kept indices: M-RoPE's
temporal/height/width ids for the Qwen families, the plain index for LLaVA-OneVision). Text after
the video keeps the position it would have had: ``rope_delta`` grows by the number of dropped
tokens, so ``text index + rope_delta`` is unchanged. Everything downstream (chunked prefill, KV
pruning, the session's stored positions, follow-ups) sees an ordinary prompt with fewer visual
tokens, and the rest of the conversation continues at the positions it would have had.

Per family: Qwen3-VL's frame times stay in the prompt (text is never dropped) and every span
keeps at least one token, so each time still precedes a token of its frame; its DeepStack rows
are reduced with the tokens. LLaVA-OneVision's newline token after the last frame has no
counterpart in earlier frames and is scored as new (``evs``) or like any token (``vidcom2``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from dataclasses import dataclass

import torch

from videoqa.worker.model.clock import model_work
from videoqa.worker.model.families import FamilyAdapter, PreparedPrompt, TokenLayout, VisualFeatures
from videoqa.worker.reduction.base import ReductionMethod

#: Frame spans whose features one vision-tower call computes (the tower's peak memory is bounded
#: by this, not by the video's length).
SPANS_PER_CALL = 8
#: Token-type ids of the processor's ``mm_token_type_ids`` and other per-token inputs that are
#: reduced with ``input_ids``.
PER_TOKEN_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")


@dataclass(frozen=True)
class Reduced:
    """What a reduction did: the reduced prompt, the visual tokens before and after, the kept
    tokens' indices in the original prompt ([kept visual], ascending; what a tool maps a kept
    token back to its frame and place with), and the seconds its work took (the vision tower and
    the selection; not the pauses)."""

    prompt: PreparedPrompt
    visual_before: int
    visual_after: int
    kept_visual: torch.Tensor
    seconds: float = 0.0


class ReductionPaused:
    """What :func:`reduce_steps` yields between vision-tower calls: others may run now."""


def reduce_steps(
    adapter: FamilyAdapter, prompt: PreparedPrompt, method: ReductionMethod
) -> Generator[ReductionPaused, None, Reduced]:
    """Reduce ``prompt``'s visual tokens with ``method`` (see the module docstring)."""
    layout = prompt.layout
    pieces: list[VisualFeatures] = []
    spans = len(layout.frame_spans)
    seconds = 0.0
    for first in range(0, spans, SPANS_PER_CALL):
        started = time.perf_counter()
        with torch.inference_mode(), model_work():
            pieces.append(adapter.video_features(prompt.inputs, first, min(spans, first + SPANS_PER_CALL)))
        seconds += time.perf_counter() - started
        if first + SPANS_PER_CALL < spans:
            yield ReductionPaused()
    started = time.perf_counter()
    features = VisualFeatures(
        torch.cat([p.tokens for p in pieces]),
        tuple(torch.cat(rows) for rows in zip(*(p.deepstack for p in pieces), strict=True)),
    )
    sizes = [e - s for s, e in layout.frame_spans]
    with torch.inference_mode(), model_work():
        masks = [m.cpu() for m in method.keep(list(torch.split(features.tokens, sizes)))]
    out = reduced(prompt, features, masks)
    return dataclasses.replace(out, seconds=seconds + time.perf_counter() - started)


def reduced(prompt: PreparedPrompt, features: VisualFeatures, masks: list[torch.Tensor]) -> Reduced:
    """``prompt`` keeping, of span i's visual tokens, those ``masks[i]`` marks ([n_i] bool);
    ``features`` are all its visual tokens' ([n, hidden])."""
    layout = prompt.layout
    length = layout.prompt_length
    keep = torch.ones(length, dtype=torch.bool)
    for (start, end), mask in zip(layout.frame_spans, masks, strict=True):
        if mask.numel() != end - start or not bool(mask.any()):
            raise ValueError("a reduction must keep at least one token of every span, with one mask entry per token")
        keep[start:end] = mask
    index = keep.nonzero().flatten()
    kept = torch.cat(masks)  # [n] on the CPU, like the layout
    rows = kept.to(features.tokens.device)
    inputs = dict(prompt.inputs)
    for name in PER_TOKEN_INPUTS:
        if name in inputs:
            inputs[name] = inputs[name][:, index]
    before = torch.cumsum(keep, 0) - keep.long()  # kept tokens before each original index
    new_spans = []
    for (start, _), mask in zip(layout.frame_spans, masks, strict=True):
        first = int(before[start])
        new_spans.append((first, first + int(mask.sum())))
    dropped = length - index.numel()
    new_layout = TokenLayout(index.numel(), new_spans[0][0], new_spans[-1][1], new_spans, layout.frames_per_span)
    visual = torch.cat([torch.arange(s, e) for s, e in layout.frame_spans])
    out = PreparedPrompt(
        inputs,
        prompt.position_ids[..., index],
        prompt.rope_delta + dropped,
        new_layout,
        prompt.first_index,
        VisualFeatures(features.tokens[rows], tuple(d[rows] for d in features.deepstack)),
    )
    return Reduced(out, layout.num_visual_tokens, new_layout.num_visual_tokens, visual[kept])
