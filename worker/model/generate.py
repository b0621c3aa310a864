"""Prefill and token-by-token decoding over a (possibly pruned) KV cache with explicit positions.

After pruning, the cache is shorter than the context, so the model cannot infer positions from the
cache length: every forward here passes ``position_ids`` computed from the session's own
bookkeeping (``next_pos``: the text index of the next token in the *unpruned* sequence, and
``rope_delta``). Nothing reads the model-global ``rope_deltas``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from videoqa.worker.model.clock import model_work
from videoqa.worker.model.families import PreparedPrompt, PromptEmbeds
from videoqa.worker.model.loader import LoadedModel
from videoqa.worker.model.recurrent import LinearStates
from videoqa.worker.model.state import ConversationState
from videoqa.worker.types import GenerationParams


@dataclass
class DecodeRequest:
    """Feed ``token`` to ``state`` (a session of model ``lm``); the one asking receives the logits
    [vocab]. What :func:`answer` yields to whoever drives it: :meth:`ModelRunner.stream` feeds it
    alone, the worker's scheduler in a batched step with other sessions' requests."""

    lm: LoadedModel
    state: ConversationState
    token: int


@dataclass(frozen=True)
class Chosen:
    """The answer's token number ``index`` was chosen (``last``: the answer ends with it)."""

    token: int
    index: int
    last: bool


#: What :func:`answer` yields: a chosen token (send ``None`` back), or a request to feed one
#: (send its logits back).
AnswerStep = Chosen | DecodeRequest


def answer(
    lm: LoadedModel,
    state: ConversationState,
    logits: torch.Tensor,
    params: GenerationParams,
    check: Callable[[], None] = lambda: None,
    on_logits: Callable[[torch.Tensor], None] | None = None,
) -> Generator[AnswerStep, torch.Tensor | None, int]:
    """The decode loop of one answer, the only one: up to ``params.max_new_tokens`` tokens.

    Each token is yielded as :class:`Chosen` as soon as it is sampled; every token but the last
    is then fed back through a :class:`DecodeRequest` (the driver sends the next logits [vocab]);
    the last one stays ``state.pending_token``. ``check`` runs before every feed and raises to
    stop (cancellation, deadline); ``on_logits`` sees the logits of every step. Returns the last
    token."""
    choose = sampler(params)
    eos = lm.eos_token_ids
    token = -1
    for index in range(params.max_new_tokens):
        if on_logits is not None:
            on_logits(logits)
        token = choose(logits)
        state.pending_token = token
        last = token in eos or index == params.max_new_tokens - 1
        yield Chosen(token, index, last)
        if last:
            break
        check()
        logits = yield DecodeRequest(lm, state, token)
        state.pending_token = None
        if state.extension is not None:  # e.g. hae's recycle bin, every few tokens
            state.extension.after_token(state)
    return token


class ModelRunner:
    """Runs one loaded model. Not thread-safe: the worker calls it from its one compute thread."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.eos = lm.eos_token_ids

    @torch.inference_mode()
    @model_work()
    def prefill(self, prompt: PreparedPrompt) -> tuple[ConversationState, torch.Tensor]:
        """Encode the media and run the prompt. Returns the state and the last logits [vocab].
        A prompt that carries its visual features (reduced before the language model) runs from
        its embeddings, as a chunk does."""
        if prompt.features is not None:
            state = self.begin(prompt)
            spans = (0, len(prompt.layout.frame_spans)) if prompt.layout.frame_spans else None
            return state, self.prefill_range(state, prompt, 0, prompt.layout.prompt_length, spans)
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
        kv, linear = out.past_key_values, None
        if self.lm.layer_kinds.hybrid:
            kv, linear = LinearStates.split(self.lm.layer_kinds, kv)
        state = ConversationState(
            cache=kv,
            linear=linear,
            next_pos=prompt.layout.prompt_length,
            rope_delta=prompt.rope_delta,
            token_ids=prompt.input_ids,
        )
        return state, out.logits[0, -1].float()

    def begin(self, prompt: PreparedPrompt) -> ConversationState:
        """An empty state that :meth:`prefill_range` fills with ``prompt`` chunk by chunk."""
        kinds = self.lm.layer_kinds
        if kinds.hybrid:
            kv, linear = LinearStates.split(kinds, DynamicCache(config=self.lm.model.config))
            return ConversationState(kv, prompt.first_index, prompt.rope_delta, [], linear=linear)
        return ConversationState(DynamicCache(config=self.lm.model.config), prompt.first_index, prompt.rope_delta, [])

    @torch.inference_mode()
    @model_work()
    def embed(self, prompt: PreparedPrompt, start: int, end: int, spans: tuple[int, int] | None) -> PromptEmbeds:
        """Input embeddings of prompt tokens ``start`` to ``end``, the visual ones from the frames
        of spans ``spans`` alone (the vision tower runs here)."""
        return self.lm.adapter.embed(prompt, start, end, spans)

    @torch.inference_mode()
    @model_work()
    def prefill_range(
        self,
        state: ConversationState,
        prompt: PreparedPrompt,
        start: int,
        end: int,
        spans: tuple[int, int] | None,
        embeds: PromptEmbeds | None = None,
    ) -> torch.Tensor:
        """Run prompt tokens ``start`` to ``end`` (the chunk's visual tokens are those of frame
        spans ``spans``, embedded from those frames alone; or ``embeds`` of those tokens when
        given, from :meth:`embed`) after what ``state`` holds, at the prompt's own positions;
        returns the last logits [vocab]. The prompt's tokens before ``start`` must be in ``state``
        already (possibly compressed)."""
        device = self.lm.device
        if embeds is None:
            embeds = self.lm.adapter.embed(prompt, start, end, spans)
        with state.forward_context():
            logits = self.lm.adapter.run(embeds, prompt.position_ids[..., start:end].to(device), state.model_cache)
        state.next_pos = prompt.first_index + end
        state.rope_delta = prompt.rope_delta  # (positions are explicit while the prompt runs)
        state.token_ids.extend(prompt.input_ids[start:end])
        return logits[0, -1].float()

    @torch.inference_mode()
    @model_work()
    def feed(self, state: ConversationState, ids: list[int]) -> torch.Tensor:
        """Append text tokens at the session's next positions; returns the last logits [vocab]."""
        if not ids:
            raise ValueError("nothing to feed")
        device = self.lm.device
        rereads = state.extension is not None and len(ids) > 1
        before = state.linear.snapshot() if rereads and state.linear is not None else None
        with state.forward_context():
            out = self.lm.model(
                input_ids=torch.tensor([ids], device=device),
                position_ids=self.lm.adapter.text_positions(state.next_pos, len(ids), state.rope_delta).to(device),
                past_key_values=state.model_cache,
                use_cache=True,
                logits_to_keep=1,
            )
        state.next_pos += len(ids)
        state.token_ids.extend(ids)
        if rereads and state.extension.reread(state, len(ids)):
            # Entries came back for this question (hae's bin): it is read again with them.
            state.next_pos -= len(ids)
            del state.token_ids[-len(ids) :]
            if before is not None:  # a recurrent state cannot un-read them: back to before they were fed
                state.linear.restore(before)
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
        """:func:`answer` alone: yields each token as it is chosen, feeding every one but the last."""
        steps = answer(self.lm, state, logits, params, check, on_logits)
        reply = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration:
                return
            if isinstance(step, Chosen):
                reply = None
                yield step.token
            else:
                reply = self.feed(step.state, [step.token])


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
        if logits.device.type == "cpu" and logits.dtype == torch.float32:
            return int(logits.numpy().argmax())  # (numpy's argmax: no dispatch or thread-pool cost per token)
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.cpu().double() / params.temperature, dim=-1)
    if 0 < params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


class TextStreamer:
    """Turns token ids into text deltas, holding back incomplete multi-byte characters.

    Incremental: each token decodes only the few ids since the last emitted text (a window that
    starts one emission back, so merges across the boundary come out right), not the whole
    answer; the cost per token does not grow with the answer's length."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the decoding window
        self._read = 0  # ids up to here are in ``text``

    def push(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        now = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        delta = now[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta
