"""Multi-turn decoding with explicit positions equals running the whole conversation at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import WITH_MOE
from videoqa.worker.model.generate import ModelRunner, TextStreamer
from videoqa.worker.model.loader import LoadedModel
from videoqa.worker.model.state import ConversationState
from videoqa.worker.types import DecodedMedia, GenerationParams

GREEDY = GenerationParams(max_new_tokens=6)


def media(frames: int = 8, seed: int = 0) -> DecodedMedia:
    rng = np.random.RandomState(seed)
    return DecodedMedia.from_array((rng.rand(frames, 96, 128, 3) * 255).astype(np.uint8))


def run(gen: ModelRunner, state: ConversationState, logits: torch.Tensor) -> tuple[list[int], list[torch.Tensor]]:
    seen: list[torch.Tensor] = []
    tokens = list(gen.stream(state, logits, GREEDY, on_logits=seen.append))
    return tokens, seen


def one_shot(lm: LoadedModel, prompt, ids: list[int]) -> tuple[ConversationState, torch.Tensor]:
    """Prefill ``ids`` (the whole conversation) in one forward, positions from the model's rule."""
    inputs = dict(prompt.inputs)
    extra = len(ids) - inputs["input_ids"].shape[1]
    assert ids[: inputs["input_ids"].shape[1]] == prompt.input_ids
    inputs["input_ids"] = torch.tensor([ids])
    inputs["attention_mask"] = torch.ones(1, len(ids), dtype=torch.long)
    if "mm_token_type_ids" in inputs:
        pad = torch.zeros(1, extra, dtype=inputs["mm_token_type_ids"].dtype)
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], dim=1)
    position_ids, rope_delta = lm.adapter.prefill_positions(inputs)
    full = type(prompt)(inputs, position_ids, rope_delta, lm.adapter.layout(inputs))
    return ModelRunner(lm).prefill(full)


@pytest.mark.parametrize("model_id", WITH_MOE)
def test_second_turn_equals_one_prefill(model_id, tiny_model):
    lm = tiny_model(model_id)
    gen = ModelRunner(lm)
    prompt = lm.adapter.prepare(media(), "what is in the video?")
    state, logits = gen.prefill(prompt)
    first, _ = run(gen, state, logits)
    assert len(first) >= 1
    chunk = gen.turn_input(state, "which frame is red?", first=False)
    logits2 = gen.feed(state, chunk)
    second, live_logits = run(gen, state, logits2)

    ref_state, ref_logits = one_shot(lm, prompt, state.token_ids[: len(state.token_ids) - len(second) + 1])
    ref_second, ref_step_logits = run(ModelRunner(lm), ref_state, ref_logits)

    assert second == ref_second
    for live, ref in zip(live_logits, ref_step_logits, strict=True):
        assert torch.allclose(live, ref, atol=1e-4), (live - ref).abs().max()


@pytest.mark.parametrize("model_id", WITH_MOE)
def test_question_agnostic_first_question_equals_question_aware(model_id, tiny_model):
    lm = tiny_model(model_id)
    gen = ModelRunner(lm)
    aware_state, aware_logits = gen.prefill(lm.adapter.prepare(media(), "what is in the video?"))
    agnostic_state, _ = gen.prefill(lm.adapter.prepare(media(), None))
    logits = gen.feed(agnostic_state, gen.turn_input(agnostic_state, "what is in the video?", first=True))
    assert agnostic_state.token_ids == aware_state.token_ids
    assert torch.allclose(logits, aware_logits, atol=1e-4)


@pytest.mark.parametrize("model_id", WITH_MOE)
def test_positions_are_exercised(model_id, tiny_model):
    """Feeding the follow-up at the wrong position changes the logits: positions matter."""
    lm = tiny_model(model_id)
    gen = ModelRunner(lm)
    state, logits = gen.prefill(lm.adapter.prepare(media(), "what is in the video?"))
    list(gen.stream(state, logits, GREEDY))
    chunk = gen.turn_input(state, "and then?", first=False)
    checkpoint = state.checkpoint()
    right = gen.feed(state, chunk)
    state.rollback(checkpoint)
    state.next_pos += 40
    wrong = gen.feed(state, chunk)
    assert not torch.allclose(right, wrong, atol=1e-3)


@pytest.mark.parametrize("model_id", ["tiny-qwen2-vl", "tiny-qwen3.5"])
def test_rollback_restores_state(tiny_model, model_id):
    """A cancelled turn leaves the session exactly as before: the KV cache truncated back, and a
    hybrid model's linear-attention states (changed in place by every token) copied back."""
    lm = tiny_model(model_id)
    gen = ModelRunner(lm)
    state, logits = gen.prefill(lm.adapter.prepare(media(), "what?"))
    checkpoint = state.checkpoint()
    before = [layer.keys.clone() for layer in state.cache.layers]
    linear = state.linear.to_tensors() if state.linear is not None else {}
    list(gen.stream(state, logits, GREEDY))
    gen.feed(state, gen.turn_input(state, "more?", first=False))
    after = state.linear.to_tensors() if state.linear is not None else {}
    assert (model_id == "tiny-qwen3.5") == bool(linear)
    assert not linear or any(not torch.equal(after[k], linear[k]) for k in linear), "the turn moved the states"
    state.rollback(checkpoint)
    assert state.checkpoint() == checkpoint
    for layer, keys in zip(state.cache.layers, before, strict=True):
        assert torch.equal(layer.keys, keys)
    restored = state.linear.to_tensors() if state.linear is not None else {}
    assert restored.keys() == linear.keys() and all(torch.equal(restored[k], linear[k]) for k in linear)
    again = [gen.feed(state, gen.turn_input(state, "more?", first=False))]
    state.rollback(checkpoint)
    assert torch.equal(again[0], gen.feed(state, gen.turn_input(state, "more?", first=False)))


def test_sampling_is_reproducible_with_seed(tiny_model):
    lm = tiny_model("tiny-qwen2-vl")
    gen = ModelRunner(lm)
    params = GenerationParams(max_new_tokens=8, temperature=1.5, top_p=0.9, seed=7)
    outs = []
    for _ in range(2):
        state, logits = gen.prefill(lm.adapter.prepare(media(), "what?"))
        outs.append(list(gen.stream(state, logits, params)))
    assert outs[0] == outs[1]
    state, logits = gen.prefill(lm.adapter.prepare(media(), "what?"))
    greedy = list(gen.stream(state, logits, GenerationParams(max_new_tokens=8)))
    other_seeds = []
    for seed in range(8, 12):
        state, logits = gen.prefill(lm.adapter.prepare(media(), "what?"))
        other_seeds.append(list(gen.stream(state, logits, GenerationParams(8, 1.5, 0.9, seed))))
    assert any(o != outs[0] for o in other_seeds) or greedy != outs[0]


def test_text_streamer_holds_back_partial_characters(tiny_model):
    tok = tiny_model("tiny-qwen2-vl").tokenizer
    ids = tok("héllo wörld ✓", add_special_tokens=False)["input_ids"]
    streamer = TextStreamer(tok)
    text = "".join(streamer.push(i) for i in ids)
    assert text == "héllo wörld ✓"


def test_text_after_a_video_starts_past_its_largest_position():
    """Qwen2-VL's rule: text after a vision block starts one past the block's largest position on
    any axis (transformers >= 5.3 starts it max(h, w) past the block's start, which for videos with
    more temporal than spatial steps lands inside the video's time range). A checkpoint trained on
    the library's positions says so in its config (``videoqa_positions: "transformers"``) and keeps
    them; Qwen2.5-VL follows the same rule."""
    import numpy as np

    from videoqa.worker.model.families import qwen_text_after_vision
    from videoqa.worker.model.loader import load_model
    from videoqa.worker.types import DecodedMedia

    #  text(0..2) video(t 3..6, hw 3..4) text → library puts the text at 5, the rule at 7
    library = torch.tensor([[0, 1, 2, 3, 3, 6, 6, 5, 6], [0, 1, 2, 3, 4, 3, 4, 5, 6], [0, 1, 2, 3, 4, 3, 4, 5, 6]])
    types = torch.tensor([[0, 0, 0, 2, 2, 2, 2, 0, 0]])
    fixed = qwen_text_after_vision(library.unsqueeze(1), types)[:, 0]
    assert fixed[:, :7].tolist() == library[:, :7].tolist() and fixed[:, 7:].tolist() == [[7, 8]] * 3

    media = DecodedMedia.from_array((np.random.RandomState(0).rand(64, 112, 112, 3) * 255).astype(np.uint8))
    for model_id, follows_library in (("tiny-qwen2-vl", False), ("tiny-qwen2.5-vl", False), ("tiny-qwen2-vl", True)):
        lm = load_model(model_id)
        if follows_library:
            lm.model.config.videoqa_positions = "transformers"
        prompt = lm.adapter.prepare(media, "what?")
        ids = torch.tensor(prompt.input_ids)
        video = ids == lm.model.config.video_token_id
        after = int(torch.nonzero(video)[-1]) + 1
        positions = prompt.position_ids[:, 0]
        video_max = int(positions[:, video].max())
        video_start = int(positions[1, video].min())
        spatial = int(positions[1, video].max()) - video_start + 1
        expected = video_start + spatial if follows_library else video_max + 1
        assert positions[:, after].tolist() == [expected] * 3, model_id
        assert (video_start + spatial <= video_max) and (expected != video_max + 1) == follows_library
        assert prompt.rope_delta == int(positions[0, -1]) + 1 - positions.shape[-1]
