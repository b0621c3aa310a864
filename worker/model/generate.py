"""Prefill and token-by-token decoding over a (possibly pruned) KV cache with explicit positions.

After pruning, the cache is shorter than the context, so the model cannot infer positions from the
cache length: every forward here passes ``position_ids`` computed from the session's own
bookkeeping (``next_pos``: the text index of the next token in the *unpruned* sequence, and
``rope_delta``). Nothing reads the model-global ``rope_deltas``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from transformers import DynamicCache

from videoqa.worker.model.families import PreparedPrompt
from videoqa.worker.model.loader import LoadedModel
from videoqa.worker.model.state import ConversationState
from videoqa.worker.types import GenerationParams


class Generator:
    """Runs one loaded model. Not thread-safe: the worker calls it from its one compute thread."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.eos = lm.eos_token_ids

    @torch.inference_mode()
    def prefill(self, prompt: PreparedPrompt) -> tuple[ConversationState, torch.Tensor]:
        """Encode the media and run the prompt. Returns the state and the last logits [vocab]."""
        device = self.lm.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prompt.inputs.items()}
        cache = DynamicCache(config=self.lm.model.config)
        out = self.lm.model(
            **inputs,
            position_ids=prompt.position_ids.to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        state = ConversationState(
            cache=out.past_key_values,
            next_pos=prompt.layout.prompt_length,
            rope_delta=prompt.rope_delta,
            token_ids=prompt.input_ids,
        )
        return state, out.logits[0, -1].float()

    @torch.inference_mode()
    def feed(self, state: ConversationState, ids: list[int]) -> torch.Tensor:
        """Append text tokens at the session's next positions; returns the last logits [vocab]."""
        if not ids:
            raise ValueError("nothing to feed")
        device = self.lm.device
        with state.forward_context():
            out = self.lm.model(
                input_ids=torch.tensor([ids], device=device),
                position_ids=self.lm.adapter.text_positions(state.next_pos, len(ids), state.rope_delta).to(device),
                past_key_values=state.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        state.next_pos += len(ids)
        state.token_ids.extend(ids)
        if state.extension is not None and len(ids) > 1 and state.extension.reread(state, len(ids)):
            # Entries came back for this question (hae's bin): it is read again with them.
            state.next_pos -= len(ids)
            del state.token_ids[-len(ids) :]
            return self.feed(state, ids)
        return out.logits[0, -1].float()

    def turn_input(self, state: ConversationState, question: str, first: bool) -> list[int]:
        """Token ids that put ``question`` into the conversation.

        ``first`` means no answer precedes it (a question-agnostic session's first question).
        Otherwise the ids close the previous answer (feeding its last sampled token unless that
        is the end-of-turn token the template writes anyway) and open a new user turn.
        """
        adapter = self.lm.adapter
        if first:
            return adapter.encode_text(question + adapter.question_suffix)
        ids = adapter.encode_text(adapter.followup_text(question))
        pending = state.pending_token
        if pending is None or (ids and ids[0] == pending):
            return ids
        return [pending, *ids]

    def stream(
        self,
        state: ConversationState,
        logits: torch.Tensor,
        params: GenerationParams,
        check: Callable[[], None] = lambda: None,
        on_logits: Callable[[torch.Tensor], None] | None = None,
    ) -> Iterator[int]:
        """Sample up to ``params.max_new_tokens`` tokens, yielding each as soon as it is chosen.

        Every yielded token but the last is fed back; the last one becomes
        ``state.pending_token``. ``check`` runs before every forward pass and raises to stop the
        loop (cancellation, deadline). ``on_logits`` sees the logits [vocab] of every step.
        """
        choose = sampler(params)
        for step in range(params.max_new_tokens):
            if on_logits is not None:
                on_logits(logits)
            token = choose(logits)
            state.pending_token = token
            yield token
            if token in self.eos or step == params.max_new_tokens - 1:
                return
            check()
            logits = self.feed(state, [token])
            state.pending_token = None
            if state.extension is not None:
                state.extension.after_token(state)


def sampler(params: GenerationParams) -> Callable[[torch.Tensor], int]:
    """``choose(logits [vocab]) -> token`` for one answer: greedy, or seeded sampling."""
    generator = None
    if params.temperature > 0:
        generator = torch.Generator(device="cpu")
        if params.seed is not None:
            generator.manual_seed(int(params.seed))
        else:
            generator.seed()
    return lambda logits: sample(logits, params, generator)


def sample(logits: torch.Tensor, params: GenerationParams, generator: torch.Generator | None) -> int:
    """Greedy when ``temperature`` is 0, else temperature + nucleus (top-p) sampling.

    ``logits`` has shape [vocab]."""
    if params.temperature <= 0 or generator is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.cpu().double() / params.temperature, dim=-1)
    if 0 < params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


class TextStreamer:
    """Turns token ids into text deltas, holding back incomplete multi-byte characters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta, self.text = text[len(self.text) :], text
        return delta
