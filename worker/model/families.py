"""Per-family prompt construction, processor calls, token layout and position ids.

Two position schemes cover the supported families:

- **M-RoPE** (Qwen2-VL, Qwen2.5-VL): prefill positions come from the model's stateless
  ``get_rope_index``; every text token after the video sits at ``text_index + rope_delta`` on all
  three axes, so later chunks get positions of shape (3, 1, q). Text after a video starts one past
  the video's largest position, as the Qwen2-VL paper and the released checkpoints have it
  (transformers ≥ 5.3 starts it ``max(h, w)`` past the video's start, inside the video's time
  range when it has more temporal than spatial steps; see :func:`qwen_text_after_vision`). A
  checkpoint trained on the library's rule says so with ``videoqa_positions: "transformers"`` in
  its config (the demo model does).
- **1-D RoPE** (LLaVA-OneVision): positions are the plain token index, shape (1, q), and
  ``rope_delta`` is 0.

Qwen3-VL and Qwen3.5 write each temporal patch's time before it (``<1.5 seconds><|vision_start|>
<|video_pad|>…<|vision_end|>``), so a video's visual tokens are one run per temporal patch with text
between them; their M-RoPE gives each patch its own temporal id (the text index where it starts)
and text after a patch continues past its largest position, the rule the released checkpoints use
(the library's own, unchanged). Qwen3-VL also adds DeepStack features (vision-block outputs) to
the hidden states of its first decoder layers at the visual tokens, which
:class:`PromptEmbeds` carries through chunked prefill.

``rope_delta`` and the next text index are per-session state; nothing here reads the model's own
``rope_deltas`` attribute, which is shared by every session on the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from videoqa.worker.errors import InvalidInput
from videoqa.worker.types import DecodedMedia

#: Marks where the question goes when the prompt is rendered before the question is known.
QUESTION_SENTINEL = "\u2063QUESTION\u2063"
#: Marks where a previous answer goes when rendering the text that follows it.
ANSWER_SENTINEL = "\u2063ANSWER\u2063"


@dataclass
class TokenLayout:
    """Where the visual tokens are in the prompt.

    ``frame_spans[i] = (start, end)`` is the half-open range of token indices of frame group i:
    one temporal patch for Qwen (2 frames by default), one frame for LLaVA-OneVision. Taken from
    the processor output, never hard-coded.
    """

    prompt_length: int
    visual_start: int
    visual_end: int
    frame_spans: list[tuple[int, int]]
    frames_per_span: int

    @property
    def num_visual_tokens(self) -> int:
        return sum(end - start for start, end in self.frame_spans)


@dataclass
class VisualFeatures:
    """What the vision tower makes of some frame spans: ``tokens`` [n, hidden], the language
    model's embeddings of their n visual tokens, and ``deepstack`` (Qwen3-VL), one [n, hidden]
    per decoder layer that adds it to its output at those tokens (empty for other families)."""

    tokens: torch.Tensor
    deepstack: tuple[torch.Tensor, ...] = ()


@dataclass
class PromptEmbeds:
    """Input embeddings of a range of prompt tokens: ``embeds`` [1, q, hidden]; ``visual`` [q]
    (bool) marks the visual tokens, and ``deepstack`` holds, per DeepStack layer, [n_visual,
    hidden] rows for them in order (empty: the family has none, or the range holds no visual
    token)."""

    embeds: torch.Tensor
    visual: torch.Tensor
    deepstack: tuple[torch.Tensor, ...] = ()

    def piece(self, start: int, end: int) -> PromptEmbeds:
        """Tokens ``start`` to ``end`` of this range (relative), with their own DeepStack rows."""
        before = int(self.visual[:start].sum())
        inside = int(self.visual[start:end].sum())
        return PromptEmbeds(
            self.embeds[:, start:end],
            self.visual[start:end],
            tuple(rows[before : before + inside] for rows in self.deepstack) if inside else (),
        )


@dataclass
class PreparedPrompt:
    """A processed first-turn prompt.

    ``inputs`` is the processor output (``input_ids`` [1, L], pixel tensors, grids);
    ``position_ids`` is (3, 1, L) for M-RoPE models and (1, L) otherwise.
    """

    inputs: dict[str, torch.Tensor]
    position_ids: torch.Tensor
    rope_delta: int
    layout: TokenLayout
    #: Text index in the conversation of the prompt's first token (0, except for media appended
    #: to a conversation: its segment's positions are already the conversation's).
    first_index: int = 0
    #: The visual tokens' features, already computed (a prompt reduced before the language model:
    #: its frames went through the vision tower once, and only the kept tokens are in the prompt);
    #: ``None``: the vision tower runs on the prompt's pixels.
    features: VisualFeatures | None = None

    @property
    def input_ids(self) -> list[int]:
        return self.inputs["input_ids"][0].tolist()

    def span_features(self, first: int, end: int) -> VisualFeatures:
        """The precomputed features of frame spans ``first`` to ``end`` (exclusive)."""
        if self.features is None:
            raise ValueError("this prompt carries no precomputed features")
        sizes = [e - s for s, e in self.layout.frame_spans]
        a, b = sum(sizes[:first]), sum(sizes[:end])
        return VisualFeatures(self.features.tokens[a:b], tuple(rows[a:b] for rows in self.features.deepstack))


class FamilyAdapter:
    """Behaviour shared by all families; subclasses set the placeholder token and positions."""

    family: str = ""
    uses_mrope: bool = False
    video_placeholder_attr: str = "video_token_id"

    def __init__(self, model: Any, processor: Any):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.video_token_id = int(self._video_token_id())
        prefix, _, suffix = self._render(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION_SENTINEL}]}]
        ).partition(QUESTION_SENTINEL)
        #: Prompt text up to and including the video placeholder (question-agnostic prefill).
        self.video_prefix = prefix
        #: Text that closes the user turn after the question and opens the assistant's.
        self.question_suffix = suffix
        self._followup_cache: str | None = None
        self._segment_texts: tuple[str, str] | None = None

    # --- prompt text -------------------------------------------------------------------------

    def _render(self, messages: list[dict[str, Any]]) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def followup_text(self, question: str) -> str:
        """Text that follows a finished answer: end of the assistant turn, the new user turn with
        ``question``, and the opening of the next assistant turn."""
        if self._followup_cache is None:
            rendered = self._render(
                [
                    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": ANSWER_SENTINEL}]},
                    {"role": "user", "content": [{"type": "text", "text": QUESTION_SENTINEL}]},
                ]
            )
            self._followup_cache = rendered.partition(ANSWER_SENTINEL)[2]
        return self._followup_cache.replace(QUESTION_SENTINEL, question)

    def segment_text(self, after_answer: bool) -> str:
        """Text that puts more media into a conversation, up to and including its placeholder:
        after an answer, the end of the assistant turn and a new user turn opening with the media;
        else (the conversation ends with media and no question yet) the media's own text, as a
        second video of the same user message renders."""
        if self._segment_texts is None:
            after = self._render(
                [
                    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": ANSWER_SENTINEL}]},
                    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION_SENTINEL}]},
                ]
            )
            two = self._render(
                [
                    {
                        "role": "user",
                        "content": [{"type": "video"}, {"type": "video"}, {"type": "text", "text": QUESTION_SENTINEL}],
                    }
                ]
            ).partition(QUESTION_SENTINEL)[0]
            if not two.startswith(self.video_prefix):
                raise InvalidInput("this model's chat template cannot hold more media in one message")
            self._segment_texts = (
                after.partition(ANSWER_SENTINEL)[2].partition(QUESTION_SENTINEL)[0],
                two[len(self.video_prefix) :],
            )
        return self._segment_texts[0 if after_answer else 1]

    def prepare_segment(
        self,
        media: DecodedMedia,
        next_pos: int,
        rope_delta: int,
        after_answer: bool,
        pending: int | None,
        start_s: float = 0.0,
    ) -> PreparedPrompt:
        """The prompt that appends ``media`` to a conversation whose next token has text index
        ``next_pos`` (and ``rope_delta``): the segment text of :meth:`segment_text` (preceded by
        the previous answer's last sampled token when the template does not write it), processed
        alone, at the positions it has in one prompt holding the whole conversation. Exact: the
        families' position rules depend only on what came before through the next position.
        ``start_s``: where the segment starts on the session's clock (families that write frame
        times into the prompt continue it)."""
        inputs = self._process(self.segment_text(after_answer), media, start_s)
        ids = inputs["input_ids"]
        if after_answer and pending is not None and int(ids[0, 0]) != pending:
            inputs = _prepend_token(inputs, pending)
        local, local_delta = self.prefill_positions(inputs)
        offset = next_pos + rope_delta  # the next token's position on every axis
        return PreparedPrompt(inputs, local + offset, rope_delta + local_delta, self.layout(inputs), next_pos)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- first turn --------------------------------------------------------------------------

    def prepare(self, media: DecodedMedia, question: str | None) -> PreparedPrompt:
        """Process the frames and the prompt; with ``question`` None the prompt stops right after
        the video (question-agnostic), else it ends with the question and the assistant prefix."""
        text = self.video_prefix if question is None else self.video_prefix + question + self.question_suffix
        inputs = self._process(text, media, 0.0)
        position_ids, rope_delta = self.prefill_positions(inputs)
        return PreparedPrompt(inputs, position_ids, rope_delta, self.layout(inputs))

    def _process(self, text: str, media: DecodedMedia, start_s: float) -> dict[str, torch.Tensor]:
        """The processor's output for ``text`` with ``media`` (frame times offset by ``start_s``)."""
        raise NotImplementedError

    def _video_token_id(self) -> int:
        return getattr(self.model.config, self.video_placeholder_attr)

    def layout(self, inputs: dict[str, torch.Tensor]) -> TokenLayout:
        ids = inputs["input_ids"][0]
        where = (ids == self.video_token_id).nonzero().flatten()
        if where.numel() == 0:
            raise InvalidInput("the processor produced no visual tokens for this media")
        start, end = int(where[0]), int(where[-1]) + 1
        if end - start != where.numel():
            raise InvalidInput("visual tokens are not contiguous; unsupported prompt layout")
        spans, per_span = self._frame_spans(inputs, start, end)
        return TokenLayout(ids.numel(), start, end, spans, per_span)

    def _frame_spans(self, inputs: dict[str, torch.Tensor], start: int, end: int) -> tuple[list[tuple[int, int]], int]:
        raise NotImplementedError

    # --- chunked prefill ---------------------------------------------------------------------

    def video_features(self, inputs: dict[str, torch.Tensor], first: int, end: int) -> VisualFeatures:
        """What the vision tower makes of frame spans ``first`` to ``end`` (exclusive), in prompt
        order, from those frames alone. Exact (equal to the whole video's features at those
        tokens) because every supported vision tower attends within one frame span: the Qwen
        families within each temporal patch (``cu_seqlens`` per grid row), LLaVA-OneVision's
        SigLIP per frame."""
        raise NotImplementedError

    def embed(self, prompt: PreparedPrompt, start: int, end: int, spans: tuple[int, int] | None) -> PromptEmbeds:
        """Input embeddings of prompt tokens ``start`` to ``end``: text embeddings, with the visual
        features of frame spans ``spans`` at the visual tokens (the spans whose tokens lie in the
        range; ``None``: the range holds no visual token)."""
        model = self.model.model
        ids = prompt.inputs["input_ids"][:, start:end].to(self.model.device)
        embeds = model.get_input_embeddings()(ids)
        visual = (ids[0] == self.video_token_id).cpu()
        if spans is None:
            return PromptEmbeds(embeds, visual)
        if prompt.features is not None:
            features = prompt.span_features(*spans)
        else:
            features = self.video_features(prompt.inputs, *spans)
        where = visual.nonzero().flatten().to(embeds.device)
        if where.numel() != features.tokens.shape[0]:
            raise InvalidInput("visual features do not match the visual tokens of a prefill chunk")
        embeds[0, where] = features.tokens.to(embeds.device, embeds.dtype)
        deepstack = tuple(rows.to(embeds.device, embeds.dtype) for rows in features.deepstack)
        return PromptEmbeds(embeds, visual, deepstack)

    def run(self, inputs: PromptEmbeds, position_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """One language-model forward of ``inputs`` at ``position_ids`` after what ``cache`` holds
        (which it extends); the last position's logits [1, 1, vocab]."""
        out = self.model(
            inputs_embeds=inputs.embeds,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits

    # --- positions ---------------------------------------------------------------------------

    def prefill_positions(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        length = inputs["input_ids"].shape[1]
        return torch.arange(length).view(1, length), 0

    def text_positions(self, start: int, length: int, rope_delta: int) -> torch.Tensor:
        """Positions of ``length`` text tokens whose first has text index ``start``."""
        pos = torch.arange(start, start + length) + rope_delta
        return pos.view(1, 1, length).expand(3, 1, length) if self.uses_mrope else pos.view(1, length)


def _prepend_token(inputs: dict[str, torch.Tensor], token: int) -> dict[str, torch.Tensor]:
    """``inputs`` with a text token before the first one (ids, mask and token types)."""
    out = dict(inputs)
    for name, value in (("input_ids", token), ("attention_mask", 1), ("mm_token_type_ids", 0)):
        if name in out:
            first = torch.full((1, 1), value, dtype=out[name].dtype)
            out[name] = torch.cat([first, out[name]], dim=1)
    return out


class QwenVLAdapter(FamilyAdapter):
    """Qwen2-VL and Qwen2.5-VL: ``<|video_pad|>`` expanded to (t·h·w)/merge² tokens, M-RoPE."""

    uses_mrope = True

    def _process(self, text: str, media: DecodedMedia, start_s: float) -> dict[str, torch.Tensor]:
        from transformers.video_utils import VideoMetadata

        height, width = media.frames.shape[1:3]
        metadata = VideoMetadata(
            total_num_frames=len(media.indices),
            fps=media.sampled_fps,
            frames_indices=list(range(len(media.indices))),
            width=width,
            height=height,
            duration=len(media.indices) / media.sampled_fps,
        )
        return dict(
            self.processor(
                text=[text],
                videos=[media.frames],
                return_tensors="pt",
                videos_kwargs={"video_metadata": [metadata], "do_sample_frames": False},
            )
        )

    def _frame_spans(self, inputs, start, end):
        t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
        merge = int(getattr(self.processor.video_processor, "merge_size", 2))
        per_t = (h // merge) * (w // merge)
        if per_t * t != end - start:
            raise InvalidInput("visual token count does not match the video grid")
        temporal = int(getattr(self.processor.video_processor, "temporal_patch_size", 2))
        return [(start + i * per_t, start + (i + 1) * per_t) for i in range(t)], temporal

    def video_features(self, inputs, first, end):
        _, h, w = (int(x) for x in inputs["video_grid_thw"][0])
        per_patch = h * w
        pixels = inputs["pixel_values_videos"][first * per_patch : end * per_patch].to(self.model.device)
        grid = torch.tensor([[end - first, h, w]], device=self.model.device)
        out = self.model.model.get_video_features(pixels, grid, return_dict=True)
        deepstack = tuple(torch.cat(rows, dim=0) for rows in getattr(out, "deepstack_features", None) or ())
        return VisualFeatures(torch.cat(out.pooler_output, dim=0), deepstack)

    def prefill_positions(self, inputs):
        position_ids, _ = self._library_positions(inputs)
        if getattr(self.model.config, "videoqa_positions", "qwen") != "transformers":
            position_ids = qwen_text_after_vision(position_ids, inputs["mm_token_type_ids"])
        # The model's own delta is ``max(position) + 1 - L``. With Qwen2.5-VL's time-scaled
        # temporal ids, the max can sit inside the video, while text that follows the video
        # continues from the last position. Continuing from the last token keeps a
        # question-agnostic prefill (ending with the video) consistent with a full prompt.
        length = position_ids.shape[-1]
        return position_ids, int(position_ids[:, 0, -1].max()) + 1 - length

    def _library_positions(self, inputs):
        kwargs = {}
        if "second_per_grid_ts" in inputs:
            kwargs["second_per_grid_ts"] = inputs["second_per_grid_ts"]
        position_ids, _ = self.model.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            video_grid_thw=inputs["video_grid_thw"],
            attention_mask=inputs["attention_mask"],
            **kwargs,
        )
        return position_ids, None


def qwen_text_after_vision(position_ids: torch.Tensor, token_types: torch.Tensor) -> torch.Tensor:
    """Shift each text run that follows a vision run to start one past the largest position so far
    (the original Qwen2-VL rule), moving everything after it along. ``position_ids`` [3, 1, L],
    ``token_types`` [1, L] (0 text, else vision); returns new positions [3, 1, L]."""
    fixed = position_ids.clone()
    types = token_types[0].tolist()
    shift, largest, start = 0, None, 0
    while start < len(types):
        end = start
        while end < len(types) and (types[end] == 0) == (types[start] == 0):
            end += 1
        if types[start] == 0 and largest is not None:
            shift = largest + 1 - int(position_ids[0, 0, start])
        fixed[:, :, start:end] += shift
        largest = (
            int(fixed[:, :, start:end].max()) if largest is None else max(largest, int(fixed[:, :, start:end].max()))
        )
        start = end
    return fixed


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL (dense and MoE) and Qwen3.5: each temporal patch after its time in the prompt, one
    visual run per patch, M-RoPE per patch (the library's rule is the released checkpoints': text
    after a patch starts one past its largest position, so :func:`qwen_text_after_vision` would
    change nothing), and Qwen3-VL's DeepStack features carried to the first decoder layers."""

    def _process(self, text: str, media: DecodedMedia, start_s: float) -> dict[str, torch.Tensor]:
        from transformers.video_utils import VideoMetadata

        frames = media.frames
        times = [start_s + float(t) for t in media.timestamps]
        if len(frames) == 1:  # a temporal patch is two frames: a still is its one frame twice
            frames, times = np.concatenate([frames, frames]), times * 2
        height, width = frames.shape[1:3]
        # The processor writes each patch's time as the mean of its first and last frame's
        # ``frames_indices[i] / fps``: with fps 1, the session clock's own times in seconds.
        metadata = VideoMetadata(
            total_num_frames=len(frames),
            fps=1.0,
            frames_indices=times,
            width=width,
            height=height,
            duration=max(times) - min(times) if times else 0.0,
        )
        return dict(
            self.processor(
                text=[text],
                videos=[frames],
                return_tensors="pt",
                videos_kwargs={"video_metadata": [metadata], "do_sample_frames": False},
            )
        )

    def layout(self, inputs: dict[str, torch.Tensor]) -> TokenLayout:
        ids = inputs["input_ids"][0]
        where = (ids == self.video_token_id).nonzero().flatten()
        if where.numel() == 0:
            raise InvalidInput("the processor produced no visual tokens for this media")
        gaps = (where[1:] != where[:-1] + 1).nonzero().flatten()
        starts = [int(where[0])] + [int(where[g + 1]) for g in gaps]
        ends = [int(where[g]) + 1 for g in gaps] + [int(where[-1]) + 1]
        t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
        merge = int(getattr(self.processor.video_processor, "merge_size", 2))
        per_t = (h // merge) * (w // merge)
        if len(starts) != t or any(e - s != per_t for s, e in zip(starts, ends, strict=True)):
            raise InvalidInput("visual token runs do not match the video grid")
        temporal = int(getattr(self.processor.video_processor, "temporal_patch_size", 2))
        return TokenLayout(ids.numel(), starts[0], ends[-1], list(zip(starts, ends, strict=True)), temporal)

    def prefill_positions(self, inputs):
        position_ids, _ = self._library_positions(inputs)
        length = position_ids.shape[-1]
        return position_ids, int(position_ids[:, 0, -1].max()) + 1 - length

    def run(self, inputs: PromptEmbeds, position_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        if not inputs.deepstack:
            return super().run(inputs, position_ids, cache)
        # The full model only injects DeepStack features it computes from pixels; with embeddings
        # made chunk by chunk the language model takes them directly.
        out = self.model.model.language_model(
            inputs_embeds=inputs.embeds,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            visual_pos_masks=inputs.visual[None].to(inputs.embeds.device),
            deepstack_visual_embeds=list(inputs.deepstack),
        )
        return self.model.lm_head(out.last_hidden_state[:, -1:])


class LlavaOnevisionAdapter(FamilyAdapter):
    """LLaVA-OneVision: ``<video>`` expanded to pooled patches per frame plus one newline token."""

    video_placeholder_attr = "video_token_index"

    def _process(self, text, media, start_s):
        return dict(self.processor(text=[text], videos=[media.frames], return_tensors="pt"))

    def video_features(self, inputs, first, end):
        frames = int(inputs["pixel_values_videos"].shape[1])
        pixels = inputs["pixel_values_videos"][:, first:end].to(self.model.device)
        out = self.model.model.get_video_features(pixels, return_dict=True).pooler_output[0]
        # the video's one newline token follows its last frame
        return VisualFeatures(out if end == frames else out[:-1])

    def _frame_spans(self, inputs, start, end):
        frames = int(inputs["pixel_values_videos"].shape[1])
        total = end - start
        per_frame = (total - 1) // frames if (total - 1) % frames == 0 else total // frames
        spans = [(start + i * per_frame, start + (i + 1) * per_frame) for i in range(frames)]
        if spans[-1][1] != end:  # the trailing newline token belongs to the last frame
            spans[-1] = (spans[-1][0], end)
        return spans, 1


ADAPTERS: dict[str, type[FamilyAdapter]] = {
    "qwen2_vl": QwenVLAdapter,
    "qwen2_5_vl": QwenVLAdapter,
    "llava_onevision": LlavaOnevisionAdapter,
    "qwen3_vl": Qwen3VLAdapter,
    "qwen3_vl_moe": Qwen3VLAdapter,
    "qwen3_5": Qwen3VLAdapter,
    "qwen3_5_moe": Qwen3VLAdapter,
}


def adapter_for(model: Any, processor: Any) -> FamilyAdapter:
    family = model.config.model_type
    if family not in ADAPTERS:
        supported = ", ".join(sorted(ADAPTERS))
        raise InvalidInput(f"model type {family!r} is not supported (supported: {supported})")
    adapter = ADAPTERS[family](model, processor)
    adapter.family = family
    return adapter
