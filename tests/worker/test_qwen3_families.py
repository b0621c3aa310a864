"""Qwen3-VL and Qwen3.5 specifics: the timestamped prompt, DeepStack, positions, and the hybrid
session's linear-attention state (stored, restored, really used).

The invariants every family shares (keep-all, chunked, batched, reload, rollback) run over these
families with the others (``tests.conftest.FAMILIES``)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tests.media import make_video
from tests.pruning.conversation import GREEDY, Conversation
from videoqa.worker.kvcache.records import encode_delta, encode_prefix, restore
from videoqa.worker.model.families import qwen_text_after_vision
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.model.recurrent import LinearStates
from videoqa.worker.model.state import CacheExtension
from videoqa.worker.types import DecodedMedia, PruningSpec, SamplingSpec

TIME = re.compile(r"<(\d+\.\d) seconds>")


def _clip(frames: int, seed: int = 0) -> DecodedMedia:
    rng = np.random.RandomState(seed)
    return DecodedMedia.from_array((rng.rand(frames, 96, 128, 3) * 255).astype(np.uint8))


@pytest.mark.parametrize("model_id", ["tiny-qwen3-vl", "tiny-qwen3.5"])
def test_the_timestamped_prompt_is_the_processors_own(tiny_model, model_id):
    """16 frames sampled at 2 fps from a 24 fps video: the prompt the service builds from the
    sampled frames' times is token for token (and pixel for pixel) the one the family's processor
    builds from the source's frame indices and fps, each temporal patch after its mean time."""
    from videoqa.worker.video.decode_child import decode_video

    media = decode_video(make_video(frames=192, fps=24), SamplingSpec(fps=2.0, max_frames=32))
    assert len(media.indices) == 16 and media.source_fps == 24
    lm = tiny_model(model_id)
    mine = lm.adapter.prepare(media, "what is on screen?")

    from transformers.video_utils import VideoMetadata

    height, width = media.frames.shape[1:3]
    metadata = VideoMetadata(
        total_num_frames=media.source_frames,
        fps=media.source_fps,
        frames_indices=list(media.indices),
        width=width,
        height=height,
    )
    text = lm.adapter.video_prefix + "what is on screen?" + lm.adapter.question_suffix
    theirs = lm.processor(
        text=[text],
        videos=[media.frames],
        return_tensors="pt",
        videos_kwargs={"video_metadata": [metadata], "do_sample_frames": False},
    )
    assert mine.inputs["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert torch.equal(mine.inputs["pixel_values_videos"], theirs["pixel_values_videos"])
    assert torch.equal(mine.inputs["video_grid_thw"], theirs["video_grid_thw"])
    written = TIME.findall(lm.tokenizer.decode(mine.input_ids))
    assert written == [f"{i + 0.25:.1f}" for i in range(8)], "frames 0.0+0.5 s, 1.0+1.5 s, ... averaged"
    assert len(mine.layout.frame_spans) == 8 and mine.layout.frames_per_span == 2


def test_appended_media_continues_the_sessions_clock_in_the_prompt(tiny_model):
    lm = tiny_model("tiny-qwen3-vl")
    talk = Conversation(lm, PruningSpec("full"), "what is in the video?")
    talk.answer()
    first = TIME.findall(lm.tokenizer.decode(talk.state.token_ids))
    assert first == ["0.2", "1.2", "2.2", "3.2"] and talk.session.clock_s == 4.0  # 8 frames at 2 fps
    segment, _ = talk.append(frames=4)
    written = TIME.findall(lm.tokenizer.decode(talk.state.token_ids))
    assert written == [*first, "4.2", "5.2"], "the appended clip's patches at 4.25 s and 5.25 s"
    assert segment.timestamps == (4.0, 4.5, 5.0, 5.5) and talk.session.snapshot().frame_timestamps[-1] == 5.5


def test_a_still_image_is_one_temporal_patch(tiny_model):
    lm = tiny_model("tiny-qwen3-vl")
    prompt = lm.adapter.prepare(_clip(1), "what?")
    assert len(prompt.layout.frame_spans) == 1 and TIME.findall(lm.tokenizer.decode(prompt.input_ids)) == ["0.0"]


@pytest.mark.parametrize("model_id", ["tiny-qwen3-vl", "tiny-qwen3.5"])
def test_text_after_each_patch_follows_the_released_rule(tiny_model, model_id):
    """Each temporal patch has its own temporal id (where it starts); the text after it (its
    time, the question) starts one past its largest position: the library's rule for these
    families is the original one, which ``qwen_text_after_vision`` would not change."""
    lm = tiny_model(model_id)
    prompt = lm.adapter.prepare(_clip(8), "what?")
    positions, types = prompt.position_ids, prompt.inputs["mm_token_type_ids"]
    assert torch.equal(qwen_text_after_vision(positions, types), positions)
    for start, end in prompt.layout.frame_spans:
        span = positions[:, 0, start:end]
        assert span[0].unique().numel() == 1, "one temporal id per patch"
        assert int(positions[0, 0, end]) == int(span.max()) + 1, "the next text starts past the patch"
    assert prompt.rope_delta == int(positions[0, 0, -1]) + 1 - positions.shape[-1] < 0


def test_deepstack_features_reach_chunked_prefill(tiny_model):
    """Qwen3-VL adds vision-block outputs to its first decoder layers at the visual tokens; a
    chunked prefill carries them per chunk (slicing them to each forward's visual tokens). Left
    out, the logits change: they are really used."""
    lm = tiny_model("tiny-qwen3-vl")
    runner = ModelRunner(lm)
    prompt = lm.adapter.prepare(_clip(8), "what?")
    _, reference = runner.prefill(prompt)
    spans = (0, len(prompt.layout.frame_spans))
    embeds = runner.embed(prompt, 0, prompt.layout.prompt_length, spans)
    assert len(embeds.deepstack) == 2 and embeds.deepstack[0].shape[0] == prompt.layout.num_visual_tokens
    state = runner.begin(prompt)
    cut = prompt.layout.frame_spans[1][0] + 3  # inside a patch
    runner.prefill_range(state, prompt, 0, cut, spans, embeds.piece(0, cut))
    logits = runner.prefill_range(state, prompt, cut, prompt.layout.prompt_length, spans, embeds.piece(cut, None))
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)
    without = runner.begin(prompt)
    bare = type(embeds)(embeds.embeds, embeds.visual)
    changed = runner.prefill_range(without, prompt, 0, prompt.layout.prompt_length, spans, bare)
    assert (changed - reference).abs().max() > 1e-2


def test_a_hybrid_sessions_linear_state_survives_redis_and_is_used(tiny_model, redis_server):
    """Qwen3.5: a session's linear-attention states go to Redis with its records and come back bit
    for bit (prefix and turn), pruning touched only the full-attention layers, and the states
    are really used: the next answer's logits with them dropped differ."""
    import redis

    lm = tiny_model("tiny-qwen3.5")
    talk = Conversation(lm, PruningSpec("das", {}, 0.3), "what is in the video?")
    session = talk.session
    assert session.state.num_layers == lm.num_layers == 2 and len(session.state.linear.layers) == 2
    assert session.state.linear.nbytes() == lm.linear_state_bytes > 0, "what ListModels reports"
    client = redis.Redis.from_url(redis_server.url)
    client.set("t:prefix", encode_prefix(session, lm.revision, "float32"))
    client.set("t:int8", encode_prefix(session, lm.revision, "float32", quantize="int8"))
    at_prefix = session.state.linear.to_tensors()
    at_prefix_keys = session.state.cache.layers[0].keys.clone()
    talk.answer()
    client.set("t:1", encode_delta(session))

    def reload(prefix: str, *records: str):
        blobs = [client.get(key) for key in records]
        return restore(
            client.get(prefix), blobs, model_id=lm.model_id, revision=lm.revision, device=lm.device, dtype=lm.dtype
        )

    back = reload("t:prefix", "t:1")
    live, mine = session.state.linear.to_tensors(), back.state.linear.to_tensors()
    assert live.keys() == mine.keys() and {"conv.0", "rec.0", "conv.1", "rec.1", "seen"} <= live.keys()
    assert all(torch.equal(live[name], mine[name]) for name in live), "bit for bit (never quantized)"
    assert live["rec.0"].dtype == torch.float32 and back.state.cache_bytes() == session.state.cache_bytes()
    quantized = reload("t:int8")
    assert not torch.equal(quantized.state.cache.layers[0].keys, at_prefix_keys), "K/V quantized to int8"
    kept = quantized.state.linear.to_tensors()
    assert kept.keys() == at_prefix.keys() and all(torch.equal(kept[n], at_prefix[n]) for n in kept), "linear: exact"

    runner = talk.runner
    question = runner.turn_input(back.state, "and then?", first=False)
    with_state = runner.feed(back.state, question)
    live_logits = runner.feed(session.state, question)
    assert torch.equal(with_state, live_logits)
    blank = reload("t:prefix", "t:1").state
    blank.linear = LinearStates.from_tensors(
        blank.linear.kinds,
        {name: torch.zeros_like(t) if name != "seen" else t for name, t in blank.linear.to_tensors().items()},
        lm.device,
    )
    dropped = runner.feed(blank, question)
    assert (dropped - with_state).abs().max() > 1e-2
    pairs = ((back, with_state), (session, live_logits))
    answers = [list(runner.stream(each.state, logits, GREEDY)) for each, logits in pairs]
    assert answers[0] == answers[1]


class _RereadsOnce(CacheExtension):
    """Takes the question's entries out of the KV cache once and asks for it to be read again,
    as ``hae``'s bin does when entries come back for a question."""

    kind = "test-reread"

    def __init__(self) -> None:
        self.done = False

    def reread(self, state, count: int) -> bool:
        if self.done:
            return False
        self.done = True
        for layer in state.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, :-count], layer.values[:, :, :-count]
        return True

    def checkpoint(self):
        return self.done

    def rollback(self, token) -> None:
        self.done = token

    def to_record(self):
        return {}, {}

    @classmethod
    def from_record(cls, header, tensors, device):
        return cls()


def test_a_question_read_again_passes_the_recurrent_state_once(tiny_model):
    """A recurrent state cannot un-read tokens: when a cache extension has a question read again,
    the linear-attention states go back to before it first, so the session holds it once."""
    lm = tiny_model("tiny-qwen3.5")
    runner = ModelRunner(lm)
    prompt = lm.adapter.prepare(_clip(4), None)
    state, _ = runner.prefill(prompt)
    twin, _ = runner.prefill(prompt)
    state.extension = _RereadsOnce()
    ids = runner.turn_input(state, "what is in the video?", first=True)
    read_twice, read_once = runner.feed(state, ids), runner.feed(twin, ids)
    assert state.extension.done and torch.equal(read_twice, read_once)
    mine, theirs = state.linear.to_tensors(), twin.linear.to_tensors()
    assert (
        all(torch.equal(mine[name], theirs[name]) for name in theirs) and mine["seen"].tolist() == [state.next_pos] * 2
    )
