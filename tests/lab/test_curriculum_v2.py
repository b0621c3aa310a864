"""The demo model v2's training data: suite v2 conversations for a Qwen3-VL-architecture model,
with each answer's evidence at the prompt positions of the tokens that show it."""

from __future__ import annotations

import torch

from videoqa.lab import curriculum_v2
from videoqa.lab.suite import COLORS, SHAPES
from videoqa.lab.suite_v2 import DEMO_GRID, build, evidence_tokens, starts
from videoqa.worker.model import tiny
from videoqa.worker.model.families import adapter_for


def _adapter():
    model, processor = tiny.build_from_spec(curriculum_v2.SPEC_V2, 0, wide_init=False)
    return adapter_for(model, processor)


def test_the_demo_v2_model_reads_4x4_tokens_per_pair_of_frames_at_every_length():
    """128×128 frames stay 128×128 (16 merged tokens per pair, each pair after its time) from 16 to
    256 frames: the grid suite v2's evidence is computed for."""
    adapter = _adapter()
    assert adapter.model.config.model_type == "qwen3_vl"
    for frames in (16, 256):
        scene, question = build("needle", 1, frames)
        prompt = adapter.prepare(curriculum_v2.media_of(scene, 1), question.text)
        spans = prompt.layout.frame_spans
        assert len(spans) == frames // 2 and {e - s for s, e in spans} == {DEMO_GRID.per_patch}
        assert "<0.2 seconds>" in adapter.tokenizer.decode(prompt.input_ids)


def test_a_conversation_points_each_answer_at_its_evidence_tokens():
    adapter = _adapter()
    item = curriculum_v2.example(adapter, "needle", 5, 32, 128, turns=3)
    scene, question = build("needle", 5, 32)
    ids = torch.tensor(item.ids)
    first_answer = adapter.encode_text(question.answer)
    assert ids[torch.tensor(item.supervised)][: len(first_answer)].tolist() == first_answer
    evidence = item.evidence[0]
    assert item.ids[evidence.position + 1 : evidence.position + 1 + len(first_answer)] == first_answer
    prompt = adapter.prepare(curriculum_v2.media_of(scene, 5), question.text)
    spans = prompt.layout.frame_spans
    ordinals = evidence_tokens(scene, question)
    assert evidence.tokens == [spans[o // 16][0] + o % 16 for o in ordinals] and evidence.share is None
    assert all(ids[t] == adapter.video_token_id for t in evidence.tokens)
    colors, shapes = item.targets
    assert colors.shape == shapes.shape == (len(spans) * 16, 2)
    ((shot, _),) = question.evidence
    frame = starts(scene)[shot]  # the needle's shot's first frame: its tokens name the colour and shape
    labelled = colors[(frame // 2) * 16 : (frame // 2 + 1) * 16, frame % 2]
    assert (labelled == list(COLORS).index(question.answer)).sum() >= 2
    shape = SHAPES.index(question.text.split("the ")[1].rstrip("?"))
    assert (shapes[(frame // 2) * 16 : (frame // 2 + 1) * 16, frame % 2] == shape).sum() >= 2


def test_counting_teaches_the_count_as_an_attention_share():
    adapter = _adapter()
    for seed in range(4):
        _, question = build("counting", seed, 32)
        (counted,) = curriculum_v2.example(adapter, "counting", seed, 32, 128, turns=1, count_sink=4.0).evidence
        n = int(question.answer)
        assert counted.share == n / (n + 4) and len(counted.tokens) >= n
        assert curriculum_v2.example(adapter, "counting", seed, 32, 128, turns=1).evidence == []


def test_training_runs_on_suite_v2_and_saves_a_qwen3_vl_checkpoint(tmp_path, capsys):
    from videoqa.lab.train import main as train_main
    from videoqa.worker.model.loader import load_model

    out = tmp_path / "demo-v2"
    args = ["--suite", "v2", "--out", str(out), "--vision-steps", "1", "--steps", "1", "--batch", "1"]
    recipe = ["--hide", "1", "--hide-keep", "0.1,0.2", "--count-weight", "4", "--order-first"]  # 0.4.0's, and more
    assert train_main([*args, *recipe, "--frames", "16", "--eval-every", "1", "--eval-count", "1"]) == 0
    assert "qa step 1 validation overall" in capsys.readouterr().out
    lm = load_model(str(out))
    assert lm.family == "qwen3_vl" and lm.num_layers == 4 and not tiny.TINY_MODELS.get(str(out))


def test_order_first_points_the_head_at_the_earlier_shot_and_keeps_both_in_view():
    """``--order-first``: an ordering question's head is taught the answer's shot only (the shape
    shown first), while hiding still keeps both named shots visible."""
    import random

    from videoqa.lab.train import hide_visual

    adapter = _adapter()
    for seed in range(4):
        scene, question = build("ordering", seed, 32)
        plain = curriculum_v2.example(adapter, "ordering", seed, 32, 128, turns=1, count_sink=4.0)
        first = curriculum_v2.example(adapter, "ordering", seed, 32, 128, turns=1, count_sink=4.0, order_first=True)
        (both,), (looked,) = plain.evidence, first.evidence
        shown = curriculum_v2.answer_shown(scene, question)
        assert len(shown.evidence) == 1 and scene[shown.evidence[0][0]].things[0].shape == question.answer
        earlier = min(i for i, _ in question.evidence)
        assert shown.evidence[0][0] == earlier  # the answer is the shape that comes first
        assert looked.needed == both.tokens and set(looked.tokens) < set(both.tokens)
        assert len(looked.tokens) == len(evidence_tokens(scene, shown))
        assert looked.tokens[-1] < min(set(both.tokens) - set(looked.tokens))  # the later shot is left out
        hidden = set(hide_visual(first, 0.05, random.Random(seed)).hidden)
        assert not hidden & set(both.tokens)
