"""A conversation grown by appended media at the model level, and the one prompt it must equal."""

from __future__ import annotations

import torch

from tests.pruning.conftest import media
from videoqa.worker.model.chunks import Chunking
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.pruning.pipeline import PrunedPrefill, SessionMedia, run_to_end
from videoqa.worker.pruning.registry import build_method
from videoqa.worker.reduction.registry import build_reduction
from videoqa.worker.sessions import MediaSegment, Session
from videoqa.worker.types import DecodedMedia, GenerationParams, MediaKind, PruningSpec, SamplingSpec

GREEDY = GenerationParams(max_new_tokens=4)
CHUNKS = Chunking(frames=4)


class Conversation:
    """A session on one model: created from a first clip, then grown by appended clips."""

    def __init__(
        self,
        lm,
        spec: PruningSpec,
        question: str | None,
        frames: int = 8,
        seed: int = 0,
        clip: DecodedMedia | None = None,
    ):
        self.lm, self.runner = lm, ModelRunner(lm)
        self.method = build_method(spec)
        self.reduction = build_reduction(spec.reduction)
        clip = clip if clip is not None else media(frames, seed=seed)
        pipeline = PrunedPrefill(self.runner, self.method, question is not None, CHUNKS, self.reduction)
        prompt = lm.adapter.prepare(clip, question)
        out = run_to_end(pipeline.steps(prompt))
        self.logits = out.logits
        self.clips = [clip]
        self.session = Session(
            "s1",
            "tenant",
            lm.model_id,
            spec,
            [MediaSegment.of(clip, MediaKind.VIDEO, SamplingSpec(), *out.ran(prompt))],
            out.state,
            out.result.visual_kept,
            out.result.recycled,
            lm.kv_bytes_per_token,
            awaiting_question=question is None,
        )
        self.session.mark_saved()

    @property
    def state(self):
        return self.session.state

    def answer(self, params: GenerationParams = GREEDY) -> tuple[list[int], list[torch.Tensor]]:
        seen: list[torch.Tensor] = []
        tokens = list(self.runner.stream(self.state, self.logits, params, on_logits=seen.append))
        self.session.turns += 1
        self.session.awaiting_question = False
        return tokens, seen

    def ask(self, question: str) -> None:
        first = self.session.awaiting_question
        self.logits = self.runner.feed(self.state, self.runner.turn_input(self.state, question, first=first))

    def append_steps(self, frames: int = 8, seed: int = 1, clip: DecodedMedia | None = None):
        """The chunked prefill of another clip after the conversation (a generator)."""
        clip = clip if clip is not None else media(frames, seed=seed)
        state = self.state
        prompt = self.lm.adapter.prepare_segment(
            clip,
            state.next_pos,
            state.rope_delta,
            not self.session.awaiting_question,
            state.pending_token,
            self.session.clock_s,  # (as the engine does: the session's clock continues)
        )
        pipeline = PrunedPrefill(self.runner, self.method, False, CHUNKS, self.reduction)
        seen = SessionMedia(self.session.frame_spans, self.session.visual_tokens_before)
        return clip, prompt, pipeline.steps(prompt, state=state, media=seen)

    def append(self, frames: int = 8, seed: int = 1, clip: DecodedMedia | None = None):
        clip, prompt, steps = self.append_steps(frames, seed, clip)
        out = run_to_end(steps)
        session = self.session
        layout, encoded = out.ran(prompt)
        segment = MediaSegment.of(clip, MediaKind.VIDEO, SamplingSpec(), layout, session.clock_s, encoded)
        session.visual_tokens_after, session.recycled_tokens = out.result.visual_kept, out.result.recycled
        session.awaiting_question = True
        session.segments.append(segment)
        self.clips.append(clip)
        return segment, out


def one_prompt(lm, clips, token_ids: list[int]):
    """The whole conversation as one prompt (every clip's features, the library's positions) ->
    (state, logits), through plain ModelRunner.prefill."""
    from videoqa.worker.model.families import PreparedPrompt, QwenVLAdapter, TokenLayout

    adapter = lm.adapter
    text = "".join(adapter.segment_text(False) for _ in clips)  # one placeholder per clip
    inputs = dict(_process_many(lm, text, clips, [c.frames for c in clips]))
    ids = torch.tensor([token_ids])
    inputs["input_ids"] = ids
    inputs["attention_mask"] = torch.ones_like(ids)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = (ids == adapter.video_token_id).long() * 2
    if isinstance(adapter, QwenVLAdapter):
        position_ids, rope_delta = adapter.prefill_positions(inputs)
    else:
        position_ids, rope_delta = torch.arange(ids.shape[1]).view(1, -1), 0
    layout = TokenLayout(ids.shape[1], 0, 0, [], 1)  # (only the length is used by a plain prefill)
    return ModelRunner(lm).prefill(PreparedPrompt(inputs, position_ids, rope_delta, layout))


def _process_many(lm, text, clips, videos):
    from transformers.video_utils import VideoMetadata

    adapter = lm.adapter
    if adapter.family == "llava_onevision":
        return adapter.processor(text=[text], videos=videos, return_tensors="pt")
    metadata = [
        VideoMetadata(
            total_num_frames=len(c.indices),
            fps=c.sampled_fps,
            frames_indices=list(range(len(c.indices))),
            width=c.frames.shape[2],
            height=c.frames.shape[1],
            duration=len(c.indices) / c.sampled_fps,
        )
        for c in clips
    ]
    return adapter.processor(
        text=[text],
        videos=videos,
        return_tensors="pt",
        videos_kwargs={"video_metadata": metadata, "do_sample_frames": False},
    )
