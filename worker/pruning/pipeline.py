"""Prefill with the statistics a pruning method asks for, then prune; in one forward or in chunks.

Question-aware (the question is in the prefill): the observation window is the text after the
video, recorded during the prefill itself. Question-agnostic (upload now, ask later): the prefill
ends with the video, so a method that scores with an observation window gets a generic *probe*
prompt instead: :data:`PROBE_QUESTION` is fed as if it were the first question, its attention
recorded, and then it is rolled back out of the cache. Methods that need no window (``random``,
``streaming_llm``, ``h2o``, ``look_m``) score the same way in both modes.

Chunked (:meth:`PrunedPrefill.steps`): the prompt runs in chunks of whole frame spans, each
chunk's vision features computed from its own frames, and the caller gets control back after
every chunk (the worker decodes other sessions' tokens there). With one chunk this is exactly the
one-shot path. A progressive method that compresses is applied after **every** chunk to the
visual entries accumulated so far, so the cache never holds more than the budget plus one chunk:
each step records the chunk's own query rows (over the cache as it is then) and an observation
window fed after the chunk and rolled back (the text after the video when the question came with
the upload, else that text and the probe), as if the video ended there; the last step is the
one-shot prune of what is left. A one-shot method runs the chunks with its statistics summed over
them (equal to one forward's) and prunes once at the end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator
from dataclasses import dataclass

import torch

from videoqa.worker.model.attention import Recording, recording
from videoqa.worker.model.chunks import Chunk, Chunking, plan_chunks, steps_of
from videoqa.worker.model.clock import model_work
from videoqa.worker.model.families import PreparedPrompt, TokenLayout
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.model.state import TOKEN, ConversationState, LayerSlots, VisualSlots
from videoqa.worker.pruning.base import LayerView, PruneContext, PruneResult, PruningMethod, RowSets
from videoqa.worker.reduction.base import ReductionMethod
from videoqa.worker.reduction.prompt import Reduced, ReductionPaused, reduce_steps

#: The observation window of question-agnostic pruning: a question about everything, in order,
#: so that attention spreads over every frame the way a real question about the video would.
PROBE_QUESTION = "Describe what happens in this video, from the first frame to the last, in detail."


@dataclass(frozen=True)
class ChunkDone:
    """What :meth:`PrunedPrefill.steps` yields after each chunk: which one of how many, the
    seconds its forward and its compression took, and the KV bytes the cache held at its peak
    (after the forward, before compressing)."""

    index: int
    chunks: int
    prefill_s: float
    prune_s: float
    kv_bytes: int


@dataclass(frozen=True)
class StepDone:
    """What :meth:`PrunedPrefill.steps` yields between the forwards of one chunk (when
    ``Chunking.step_tokens`` splits it): others may run now; nothing else changed."""


@dataclass
class Prefilled:
    """The outcome of :meth:`PrunedPrefill.steps`: the state, the last logits [vocab], what the
    compression did, and the most KV bytes the cache held while it was built."""

    state: ConversationState
    logits: torch.Tensor
    result: PruneResult
    peak_kv_bytes: int
    chunks: int
    #: What the reduction before the language model did (``None``: no reduction).
    reduction: Reduced | None = None

    def ran(self, prompt: PreparedPrompt) -> tuple[TokenLayout, int]:
        """The layout the language model ran for ``prompt`` (the reduced one after a reduction), and
        the visual tokens the vision tower made when a reduction dropped some (0: no reduction);
        what a session records of a media segment."""
        if self.reduction is None:
            return prompt.layout, 0
        return self.reduction.prompt.layout, prompt.layout.num_visual_tokens


@dataclass(frozen=True)
class SessionMedia:
    """Where a prompt's media sits in its session: frame spans and visual tokens seen before it
    (0 for a new session; media appended to a session continues the session's count)."""

    frames_before: int = 0
    visual_before: int = 0


class PrunedPrefill:
    """One session's prefill under a method: ``prefill()`` then ``prune()`` (one forward), or
    ``steps()`` (chunked, see the module docstring)."""

    def __init__(
        self,
        generator: ModelRunner,
        method: PruningMethod,
        question_aware: bool,
        chunking: Chunking | None = None,
        reduction: ReductionMethod | None = None,
    ):
        self.generator = generator
        self.method = method
        #: Drops visual tokens before the language model (then ``method`` prunes the KV of the rest).
        self.reduction = reduction
        self.question_aware = question_aware
        self.chunking = chunking or Chunking()
        self.prompt: PreparedPrompt | None = None
        self.record = Recording([])
        self._context: PruneContext | None = None

    def _rows(self, layout, window: torch.Tensor, share: float = 1.0) -> RowSets:
        size = int(self.method.values.get("window", 64))
        return RowSets(layout, window[-size:], self.question_aware, self.generator.lm.num_layers, share)

    def prefill(self, prompt: PreparedPrompt) -> tuple[ConversationState, torch.Tensor]:
        self.prompt, self._context = prompt, None
        layout = prompt.layout
        rows = self._rows(layout, torch.arange(layout.visual_end, layout.prompt_length))
        groups = self.method.prefill_groups(rows)
        if self.question_aware:
            groups += self.method.window_groups(rows)
        self.record = Recording(groups, key_limit=layout.prompt_length)
        with recording(self.record) if groups else contextlib.nullcontext():
            return self.generator.prefill(prompt)

    @model_work()
    def prune(self, state: ConversationState) -> PruneResult:
        """Probe if needed, then let the method shrink the cache."""
        return self.method.apply(state, self.context(state))

    def context(self, state: ConversationState) -> PruneContext:
        """What the method scores with (runs the probe in question-agnostic mode, once)."""
        if self.prompt is None:
            raise RuntimeError("prefill() first")
        if self._context is None:
            window = self.record if self.question_aware else self._probe(state)
            cfg = self.generator.lm.text_config
            self._context = PruneContext(
                layout=self.prompt.layout,
                prefill=self.record,
                window=window,
                num_layers=self.generator.lm.num_layers,
                num_heads=int(cfg.num_attention_heads),
                num_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
                question_aware=self.question_aware,
            )
        return self._context

    def _probe(self, state: ConversationState) -> Recording:
        """Record the method's window statistics over the probe prompt, fed after everything the
        state holds, then roll it back (the probe's own keys are left out of the statistics)."""
        probe_ids = self.generator.turn_input(state, PROBE_QUESTION, first=True)
        return self._recorded_window(state, probe_ids, torch.arange(len(probe_ids)), state.cache_length)

    def _recorded_window(
        self, state: ConversationState, ids: list[int], rows: torch.Tensor, key_limit: int | None, rope_delta=None
    ) -> Recording:
        """Feed ``ids`` (at ``rope_delta``, if given), recording the method's window statistics over
        ``rows`` of them (keys up to ``key_limit``), and roll the feed back."""
        groups = self.method.window_groups(self._rows(self.prompt.layout, rows))
        record = Recording(groups, key_limit=key_limit)
        if not groups:
            return record
        checkpoint = state.checkpoint()
        try:
            if rope_delta is not None:
                state.rope_delta = rope_delta
            with recording(record):
                self.generator.feed(state, ids)
        finally:
            state.rollback(checkpoint)
        return record

    # --- chunked --------------------------------------------------------------------------------

    def steps(
        self, prompt: PreparedPrompt, state: ConversationState | None = None, media: SessionMedia | None = None
    ) -> Generator[ChunkDone | StepDone, None, Prefilled]:
        """Prefill ``prompt`` in chunks (yielding after each) and compress; returns the outcome.

        ``state``: a conversation the prompt continues (media appended to a session; its
        positions are already the conversation's), else a new one. With one chunk and no
        ``state`` this is :meth:`prefill` then :meth:`prune`, bit for bit. With a reduction, the
        prompt is reduced first (yielding between vision-tower calls) and the rest runs on the
        reduced prompt."""
        media = media or SessionMedia()
        reduction = None
        if self.reduction is not None:
            steps = reduce_steps(self.generator.lm.adapter, prompt, self.reduction)
            reduction = yield from _paused_as_steps(steps)
            prompt = reduction.prompt
        plan = plan_chunks(prompt.layout, self.chunking)
        if state is None and len(plan) == 1 and media == SessionMedia():
            started = time.perf_counter()
            state, logits = self.prefill(prompt)
            prefill_s, peak = time.perf_counter() - started, state.cache_bytes()
            started = time.perf_counter()
            result = self.prune(state)
            yield ChunkDone(0, 1, prefill_s, time.perf_counter() - started, peak)
            return Prefilled(state, logits, result, peak, 1, reduction)
        self.prompt, self._context = prompt, None
        state = state if state is not None else self.generator.begin(prompt)
        if self.method.progressive and self.method.compresses:
            done = yield from self._progressive(prompt, state, plan, media)
        else:
            done = yield from self._chunked_then_pruned(prompt, state, plan, media)
        done.reduction = reduction
        return done

    def _chunked_then_pruned(self, prompt, state, plan, media) -> Generator[ChunkDone | StepDone, None, Prefilled]:
        """Every chunk's forward with the statistics summed over them; one prune at the end (a
        one-shot method, or one that keeps everything)."""
        appended = state.cache_length > 0
        layout = prompt.layout
        groups = []
        if not appended:  # appended media is never pruned here: appends need a progressive method
            rows = self._rows(layout, torch.arange(layout.visual_end, layout.prompt_length))
            groups = self.method.prefill_groups(rows)
            if self.question_aware:
                groups += self.method.window_groups(rows)
        self.record = Recording(groups, key_limit=layout.prompt_length)
        peak, logits, result = 0, None, None
        for index, chunk in enumerate(plan):
            logits, prefill_s = yield from self._forward(state, prompt, chunk, self.record if groups else None)
            if appended and state.slots is not None:
                _mark_tokens(state, prompt, chunk, media)
            peak = max(peak, state.cache_bytes())
            started = time.perf_counter()
            if index == len(plan) - 1:
                if appended:
                    seen = media.visual_before + layout.num_visual_tokens
                    result = PruneResult(visual_kept=seen, layer_lengths=state.cache_lengths)
                else:
                    with model_work():
                        result = self.method.apply(state, self.context(state))
            yield ChunkDone(index, len(plan), prefill_s, time.perf_counter() - started, peak)
        return Prefilled(state, logits, result, peak, len(plan))

    def _progressive(self, prompt, state, plan, media) -> Generator[ChunkDone | StepDone, None, Prefilled]:
        """After every chunk, compress the visual entries so far (see the module docstring)."""
        layout = prompt.layout
        total_visual = media.visual_before + layout.num_visual_tokens  # when this prefill ends
        peak, logits = 0, None
        for index, chunk in enumerate(plan):
            last = index == len(plan) - 1
            view = _chunk_layout(layout, chunk)
            window_rows = torch.arange(layout.visual_end, layout.prompt_length)
            rows = self._rows(view, window_rows, view.num_visual_tokens / max(1, layout.num_visual_tokens))
            groups = self.method.prefill_groups(rows)
            if last and self.question_aware:
                groups += self.method.window_groups(rows)
            record = Recording(groups, offset=chunk.start)
            logits, prefill_s = yield from self._forward(state, prompt, chunk, record if groups else None)
            _mark_tokens(state, prompt, chunk, media)
            peak = max(peak, state.cache_bytes())
            started = time.perf_counter()
            seen_visual = media.visual_before + sum(e - s for s, e in layout.frame_spans[: chunk.end_span])
            ctx_args = (state, record, media.frames_before + chunk.end_span, seen_visual)
            with model_work():
                if last:
                    window = record if self.question_aware else self._probe(state)
                    result = self.method.apply(state, self._step_context(*ctx_args, window))
                elif self._over_budget(state, total_visual):
                    window = self._intermediate_window(state, prompt, chunk)
                    context = self._step_context(*ctx_args, window)
                    context.slack, context.budget_tokens = self.chunking.slack, total_visual
                    result = self.method.apply(state, context)
            yield ChunkDone(index, len(plan), prefill_s, time.perf_counter() - started, peak)
        self.record = record
        return Prefilled(state, logits, result, peak, len(plan))

    def _forward(
        self, state: ConversationState, prompt: PreparedPrompt, chunk: Chunk, record: Recording | None
    ) -> Generator[StepDone, None, tuple[torch.Tensor, float]]:
        """Run ``chunk`` (its frames through the vision tower once, then its tokens in forwards of
        at most ``step_tokens``, recorded into ``record``), yielding between the forwards; returns
        the last logits [vocab] and the seconds the chunk's own work took (not the waits)."""
        started = time.perf_counter()
        steps = steps_of(chunk, self.chunking.step_tokens)
        embeds = self.generator.embed(prompt, chunk.start, chunk.end, _spans(chunk)) if len(steps) > 1 else None
        seconds, logits = 0.0, None
        for index, (start, end) in enumerate(steps):
            piece = None if embeds is None else embeds.piece(start - chunk.start, end - chunk.start)
            if record is not None:
                record.offset = start
            with recording(record) if record is not None else contextlib.nullcontext():
                logits = self.generator.prefill_range(state, prompt, start, end, _spans(chunk), piece)
            seconds += time.perf_counter() - started
            if index + 1 < len(steps):
                yield StepDone()  # the recording is not active while others run
                started = time.perf_counter()
        if record is not None and len(steps) > 1:
            record.cover(state.cache_lengths)
        return logits, seconds

    def _over_budget(self, state: ConversationState, budget_tokens: int) -> bool:
        slots = self.method.slots_for(budget_tokens, self.chunking.slack)
        return any(LayerView.of_map(m).entries > slots for m in _maps(state))

    def _step_context(self, state, prefill: Recording, frames_seen: int, visual_seen: int, window: Recording):
        cfg = self.generator.lm.text_config
        return PruneContext(
            layout=self.prompt.layout,
            prefill=prefill,
            window=window,
            num_layers=self.generator.lm.num_layers,
            num_heads=int(cfg.num_attention_heads),
            num_kv_heads=_kv_heads(cfg),
            question_aware=self.question_aware,
            views=[LayerView.of_map(m) for m in _maps(state)],
            frames_seen=frames_seen,
            visual_seen=visual_seen,
        )

    def _intermediate_window(self, state: ConversationState, prompt: PreparedPrompt, chunk: Chunk) -> Recording:
        """The observation window as if the video ended after ``chunk``: the text that follows the
        video in the prompt (with the question when it came with the upload), then the probe
        unless the question is there; positions continue past the video so far. Rolled back."""
        layout = prompt.layout
        ids = list(prompt.input_ids[layout.visual_end :])
        key_limit = None  # the question's own keys count, as in a question-aware prefill
        if self.question_aware:
            rows = torch.arange(len(ids))
        else:
            probe = self.generator.lm.adapter.encode_text(PROBE_QUESTION + self.generator.lm.adapter.question_suffix)
            rows = torch.arange(len(ids), len(ids) + len(probe))
            key_limit = state.cache_length + len(ids)  # the probe's own keys do not, as in one-shot
            ids += probe
        # the next text position after the video so far, by the family's rule (one past the largest)
        delta = int(prompt.position_ids[..., : chunk.end].max()) + 1 - (prompt.first_index + chunk.end)
        return self._recorded_window(state, ids, rows, key_limit, delta)


def _spans(chunk: Chunk) -> tuple[int, int] | None:
    return chunk.spans if chunk.end_span > chunk.first_span else None


def _chunk_layout(layout: TokenLayout, chunk: Chunk) -> TokenLayout:
    """The rows a chunk's forward offers a method, as a layout: its visual tokens, and the prompt
    up to its end (so that shares "of the prefill" are of what has been seen)."""
    spans = layout.frame_spans[chunk.first_span : chunk.end_span] or [(chunk.start, chunk.start)]
    return TokenLayout(chunk.end, spans[0][0], spans[-1][1], spans, layout.frames_per_span)


def _kv_heads(cfg) -> int:
    return int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)


def _maps(state: ConversationState) -> list[LayerSlots]:
    lengths = state.cache_lengths
    return [state.slots.layer(i, n) for i, n in enumerate(lengths)]


def _mark_tokens(state: ConversationState, prompt: PreparedPrompt, chunk: Chunk, media: SessionMedia) -> None:
    """Record in the slot map the entries ``chunk``'s forward appended to every layer: its prompt
    tokens in order, the visual ones with their frame span (counted in the session)."""
    layout = prompt.layout
    heads = int(state.cache.layers[0].keys.shape[1])
    fed = chunk.end - chunk.start
    base = prompt.first_index + chunk.start
    if state.slots is None:
        state.slots = VisualSlots([LayerSlots.text(heads, 0) for _ in range(state.num_layers)])
    maps = []
    for i, length in enumerate(state.cache_lengths):
        layer = state.slots.layer(i, length)
        first = length - fed  # the chunk's first entry
        kind, frame, order, count = layer.kind.clone(), layer.frame.clone(), layer.order.clone(), layer.count.clone()
        order[:, first:] = torch.arange(base, base + fed, dtype=torch.float32)
        for span in range(chunk.first_span, chunk.end_span):
            s, e = layout.frame_spans[span]
            a = first + s - chunk.start
            kind[:, a : a + e - s] = TOKEN
            frame[:, a : a + e - s] = media.frames_before + span
            count[:, a : a + e - s] = 1.0
        maps.append(LayerSlots(kind, frame, order, count, layer.weight, layer.origin))
    state.slots = VisualSlots(maps)


def _paused_as_steps(steps: Generator[ReductionPaused, None, Reduced]) -> Generator[StepDone, None, Reduced]:
    """Drive a reduction, yielding :class:`StepDone` where it pauses; returns what it did."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        yield StepDone()


def run_to_end(steps: Generator[ChunkDone | StepDone, None, Prefilled]) -> Prefilled:
    """Drive :meth:`PrunedPrefill.steps` without interleaving anything (tools, tests, the harness)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
