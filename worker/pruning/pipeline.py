"""Prefill with the statistics a pruning method asks for, then prune.

Question-aware (the question is in the prefill): the observation window is the text after the
video, recorded during the prefill itself. Question-agnostic (upload now, ask later): the prefill
ends with the video, so a method that scores with an observation window gets a generic *probe*
prompt instead: :data:`PROBE_QUESTION` is fed as if it were the first question, its attention
recorded, and then it is rolled back out of the cache. Methods that need no window (``random``,
``streaming_llm``, ``h2o``, ``look_m``) score the same way in both modes.
"""

from __future__ import annotations

import contextlib

import torch

from videoqa.worker.model.attention import Recording, recording
from videoqa.worker.model.families import PreparedPrompt
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.model.state import ConversationState
from videoqa.worker.pruning.base import PruneContext, PruneResult, PruningMethod, RowSets

#: The observation window of question-agnostic pruning: a question about everything, in order,
#: so that attention spreads over every frame the way a real question about the video would.
PROBE_QUESTION = "Describe what happens in this video, from the first frame to the last, in detail."


class PrunedPrefill:
    """One session's prefill under a method: ``prefill()``, then ``prune()``."""

    def __init__(self, generator: ModelRunner, method: PruningMethod, question_aware: bool):
        self.generator = generator
        self.method = method
        self.question_aware = question_aware
        self.prompt: PreparedPrompt | None = None
        self.record = Recording([])
        self._context: PruneContext | None = None

    def _rows(self, layout, window: torch.Tensor) -> RowSets:
        size = int(self.method.values.get("window", 64))
        return RowSets(layout, window[-size:], self.question_aware, self.generator.lm.num_layers)

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
                num_layers=int(cfg.num_hidden_layers),
                num_heads=int(cfg.num_attention_heads),
                num_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
                question_aware=self.question_aware,
            )
        return self._context

    def _probe(self, state: ConversationState) -> Recording:
        """Record the method's window statistics over the probe prompt, then roll it back."""
        probe_ids = self.generator.turn_input(state, PROBE_QUESTION, first=True)
        groups = self.method.window_groups(self._rows(self.prompt.layout, torch.arange(len(probe_ids))))
        record = Recording(groups, key_limit=self.prompt.layout.prompt_length)
        if not groups:
            return record
        checkpoint = state.checkpoint()
        try:
            with recording(record):
                self.generator.feed(state, probe_ids)
        finally:
            state.rollback(checkpoint)
        return record
