"""The training script runs both stages and writes a checkpoint that loads; its conversations,
probe targets and evidence tokens follow from the scene."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from videoqa.lab.suite import COLORS, SHAPES, build, questions_about
from videoqa.lab.train import SPEC, Evidence, collate, evidence_loss, example, media_of, watch_layers
from videoqa.lab.train import main as train_main
from videoqa.worker.model import tiny
from videoqa.worker.model.families import adapter_for
from videoqa.worker.model.loader import load_model


def test_train_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--vision-steps", "2", "--steps", "2", "--batch", "2", "--frames", "8"]
    assert train_main([*args, "--eval-every", "2", "--eval-count", "2"]) == 0
    log = capsys.readouterr().out
    assert "qa step 2 validation overall" in log and "saved" in log
    lm = load_model(str(out))
    assert lm.family == "qwen2_vl" and lm.num_layers == 4
    assert not any("probe" in name for name in lm.model.state_dict())


def test_conversation_supervises_every_answer_and_points_at_its_evidence():
    model, processor = tiny.build_from_spec(SPEC, 0, wide_init=False)
    adapter = adapter_for(model, processor)
    item = example(adapter, "needle", 5, 8, 112, turns=3)
    scene, question, answer, needle, _ = build("needle", 5, 8)
    ids = torch.tensor(item.ids)
    supervised = ids[torch.tensor(item.supervised)]
    first_answer = adapter.encode_text(answer)
    assert supervised[: len(first_answer)].tolist() == first_answer  # the family's question comes first
    assert (supervised == adapter.tokenizer.eos_token_id).sum() == 3
    k = round(needle * 7)
    span = adapter.prepare(media_of(scene, 5, 112), question).layout.frame_spans[k // 2]
    evidence = item.evidence[0]
    assert item.ids[evidence.position + 1 : evidence.position + 1 + len(first_answer)] == first_answer
    # the needle's one token: its frame group's span, the cell that holds the object's centre
    assert evidence.tokens == [span[0] + scene[k].quadrant] and evidence.share is None
    colors, shapes = item.targets
    assert colors.shape == shapes.shape == (4 * 4, 2)  # 4 frame groups x 2x2 merged tokens, 2 frames each
    labels = colors[:, k % 2].view(4, 4)[k // 2]
    assert labels[scene[k].quadrant] == list(COLORS).index(answer)
    assert (labels[[q for q in range(4) if q != scene[k].quadrant]] == len(COLORS)).all()  # "no object" elsewhere
    assert shapes[:, k % 2].view(4, 4)[k // 2][scene[k].quadrant] == SHAPES.index(question.split("the ")[1].rstrip("?"))


def test_counting_evidence_carries_the_count_as_an_attention_share():
    model, processor = tiny.build_from_spec(SPEC, 0, wide_init=False)
    adapter = adapter_for(model, processor)
    for seed in range(6):
        answer = build("counting", seed, 16)[2]
        shown = example(adapter, "counting", seed, 16, 112, turns=1, count_sink=4.0).evidence
        assert len(shown) == 1 and shown[0].share == int(answer) / (int(answer) + 4)
        assert len(shown[0].tokens) == int(answer)  # one token per frame: the suite never stacks two
        free = example(adapter, "counting", seed, 16, 112, turns=1, count_sink=0.0).evidence
        assert free == []


def test_training_positions_are_the_served_positions():
    """A conversation is trained at the positions the service gives it: the first prompt's, then
    each follow-up's text continuing from the session's next position."""
    model, processor = tiny.build_from_spec(SPEC, 0, wide_init=False)
    adapter = adapter_for(model, processor)
    item = example(adapter, "needle", 3, 16, 112, turns=3)
    scene, question, *_ = build("needle", 3, 16)
    prompt = adapter.prepare(media_of(scene, 3, 112), question)
    length = len(prompt.input_ids)
    assert item.ids[:length] == prompt.input_ids
    assert torch.equal(item.positions[:, :length], prompt.position_ids[:, 0])
    rest = adapter.text_positions(length, len(item.ids) - length, prompt.rope_delta)[:, 0]
    assert torch.equal(item.positions[:, length:], rest)
    assert int(item.positions[0, length]) > int(prompt.position_ids[0, 0, prompt.layout.visual_end - 1])


def test_questions_about_a_scene_are_answerable():
    import random

    for seed in range(20):
        scene, *_ = build("state_change", seed, 16)
        for q in questions_about(scene, random.Random(seed)):
            assert q.evidence and all(scene[f] is not None for f in q.evidence)
            if q.family in ("needle", "retrieval", "last_frames"):
                (frame,) = q.evidence
                assert q.answer in (scene[frame].color, scene[frame].shape)
            elif q.family == "counting":
                assert int(q.answer) == len(q.evidence)
            elif q.family == "ordering":
                (frame,) = q.evidence
                assert scene[frame].shape == q.answer


def test_evidence_loss_is_zero_exactly_when_the_head_looks_where_it_should():
    focused = torch.zeros(1, 5, 5)
    focused[0, 3, 1] = focused[0, 3, 2] = 0.5
    spread = torch.full((1, 5, 5), 0.2)
    batch = [SimpleNamespace(evidence=[Evidence(3, [1, 2])])]
    assert evidence_loss([focused], batch).item() < 1e-6
    assert abs(evidence_loss([spread], batch).item() + math.log(0.4)) < 1e-6
    # a counting question: the share 0.4 on its tokens, the rest on the first token (the sink)
    counted = [SimpleNamespace(evidence=[Evidence(3, [1, 2], share=0.4)])]
    calibrated = torch.zeros(1, 5, 5)
    calibrated[0, 3, 0], calibrated[0, 3, 1], calibrated[0, 3, 2] = 0.6, 0.3, 0.1
    assert abs(evidence_loss([calibrated], counted).item()) < 1e-6
    assert evidence_loss([focused], counted).item() > 1.0  # all on the evidence: the count is lost


def test_watched_layer_computes_plain_attention_and_keeps_head_zero():
    """The training attention function changes nothing but what it records: the model's logits
    equal plain sdpa's, and the kept head-0 probabilities are causal rows that sum to one."""
    model, processor = tiny.build_from_spec(SPEC, 0, wide_init=False)
    adapter = adapter_for(model, processor)
    batch = [example(adapter, family, seed, 8, 112, turns=2) for seed, family in enumerate(("needle", "counting"))]
    inputs = collate(batch, processor.tokenizer.pad_token_id)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        plain = model(**inputs).logits
        (watched,) = watch_layers(model, [1])
        recorded = model(**inputs).logits
    mask = inputs["attention_mask"].bool()
    assert torch.allclose(plain[mask], recorded[mask], atol=1e-5)
    head = watched.videoqa_head0  # [B, L, L]
    length = len(batch[0].ids)
    assert torch.allclose(head[0, :length].sum(-1), torch.ones(length), atol=1e-5)
    assert head[0, :length, :length].triu(1).abs().max() == 0  # causal


def test_training_is_deterministic(tmp_path):
    """Same seed, same steps: bit-identical weights (what makes the committed checkpoint reproducible)."""
    from safetensors.torch import load_file

    args = ["--vision-steps", "2", "--steps", "3", "--batch", "2", "--frames", "8", "--eval-every", "100"]
    for name in ("a", "b"):
        assert train_main(["--out", str(tmp_path / name), *args, "--eval-count", "1"]) == 0
    first, second = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_oversampled_families_are_drawn_by_their_weight():
    from videoqa.lab.train import family_weights

    families = ("needle", "counting", "ordering")
    weights = family_weights(families, "counting=3")
    assert weights == [1.0, 3.0, 1.0] and family_weights(families, "") == [1.0, 1.0, 1.0]
    drawn = random.Random(0).choices(families, weights, k=5000)
    assert abs(drawn.count("counting") / 5000 - 0.6) < 0.03
    for bad in ("time_at=2", "counting=0", "counting=x"):
        with pytest.raises(SystemExit):
            family_weights(families, bad)


def test_hiding_keeps_every_evidence_token_and_a_share_of_the_others():
    """A conversation that reads a pruned cache: only visual tokens are hidden, never one that
    shows an answer, and what stays visible is the drawn share (or the evidence, where larger)."""
    from videoqa.lab import curriculum_v2
    from videoqa.lab.train import hide_visual

    model, processor = tiny.build_from_spec(curriculum_v2.SPEC_V2, 0, wide_init=False)
    adapter = adapter_for(model, processor)
    item = curriculum_v2.example(adapter, "ordering", 3, 32, 128, turns=3, count_sink=4.0)
    visual, evidence = set(item.visual), {t for ev in item.evidence for t in ev.tokens}
    assert item.hidden == () and len(visual) == 16 * 16 and evidence <= visual
    for keep in (0.05, 0.3, 0.9):
        hidden = set(hide_visual(item, keep, random.Random(1)).hidden)
        assert hidden <= visual - evidence
        assert len(visual) - len(hidden) == max(round(keep * len(visual)), len(evidence))
    again = hide_visual(item, 0.3, random.Random(1)).hidden
    assert again == hide_visual(item, 0.3, random.Random(1)).hidden != hide_visual(item, 0.3, random.Random(2)).hidden
    assert all(item.video_end <= ev.position for ev in item.evidence)  # questions come after the video


def test_hidden_tokens_are_unseen_from_the_video_end_on_and_seen_before():
    """The 4-D mask: the text after the video never attends to a hidden token (the supervised
    head's probabilities there are 0), the visual tokens still attend to each other in full (the
    prefill pruning scores is unchanged), and the padding stays unattended."""
    from videoqa.lab import curriculum_v2
    from videoqa.lab.train import attention_masks, hide_visual

    model, processor = tiny.build_from_spec(curriculum_v2.SPEC_V2, 0, wide_init=False)
    adapter = adapter_for(model, processor)
    plain = curriculum_v2.example(adapter, "needle", 5, 16, 128, turns=2, count_sink=4.0)
    hiding = hide_visual(plain, 0.2, random.Random(0))
    short = curriculum_v2.example(adapter, "needle", 6, 16, 128, turns=1, count_sink=4.0)
    batch = [hiding, short]
    length = max(len(e.ids) for e in batch)
    masks = attention_masks(batch, length)
    assert masks.shape == (2, 1, length, length)
    hidden = list(hiding.hidden)
    assert not masks[0, 0, hiding.video_end :, hidden].any() and masks[0, 0, hiding.video_end - 1, hidden].all()
    assert torch.equal(masks[1, 0, :, : len(short.ids)], torch.ones(length, len(short.ids)).tril().bool())
    assert not masks[1, 0, :, len(short.ids) :].any()
    inputs = collate(batch, processor.tokenizer.pad_token_id)
    assert torch.equal(inputs["attention_mask"], masks)
    (watched,) = watch_layers(model, [1])
    with torch.no_grad():
        hidden_logits = model(**inputs).logits[0]
        head = watched.videoqa_head0[0]
        seen_logits = model(**collate([plain, short], processor.tokenizer.pad_token_id)).logits[0]
    assert head[hiding.video_end :, hidden].abs().max() == 0
    assert head[: hiding.video_end, hidden].sum() > 0
    end, size = hiding.video_end, len(plain.ids)
    assert torch.allclose(hidden_logits[:end], seen_logits[:end], atol=1e-5)  # the video itself: as without
    assert not torch.allclose(hidden_logits[end:size], seen_logits[end:size], atol=1e-3)  # the text reads less
    # without hiding anywhere the batch keeps its 2-D padding mask (the recipe of d, bit for bit)
    assert collate([plain, short], processor.tokenizer.pad_token_id)["attention_mask"].dim() == 2


def test_the_counting_share_term_is_weighted_alone():
    counted = SimpleNamespace(evidence=[Evidence(3, [1, 2], share=0.4)])
    looked = SimpleNamespace(evidence=[Evidence(3, [1, 2])])
    probabilities = torch.full((2, 5, 5), 0.2)
    one = evidence_loss([probabilities], [counted, looked])
    four = evidence_loss([probabilities], [counted, looked], share_weight=4.0)
    share_term = evidence_loss([probabilities[:1]], [counted])
    assert share_term > 0 and torch.allclose(four - one, 3 * share_term / 2)


def test_range_options_are_checked(tmp_path):
    from videoqa.lab.train import parse_range

    assert parse_range("0.05,0.5", "--hide-keep") == (0.05, 0.5)
    for bad in ("0.5", "0,0.5", "0.6,0.5", "0.1,1.5", "a,b"):
        with pytest.raises(SystemExit):
            parse_range(bad, "--hide-keep")
    for bad in (["--hide", "1.5"], ["--hide-keep", "0.5,0.2"], ["--order-first"]):  # --order-first: suite v2 only
        with pytest.raises(SystemExit):
            train_main(["--out", str(tmp_path / "x"), "--steps", "0", "--vision-steps", "0", *bad])
