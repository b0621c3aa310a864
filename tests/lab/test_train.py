"""The training script runs both stages and writes a checkpoint that loads; its conversations,
probe targets and evidence tokens follow from the scene."""

from __future__ import annotations

import torch

from videoqa.worker.lab.suite import COLORS, SHAPES, build, questions_about
from videoqa.worker.lab.train import SPEC, TokenProbe, evidence_loss, example, media_of
from videoqa.worker.lab.train import main as train_main
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
    probe = TokenProbe(SPEC.hidden, model.config.vision_config.temporal_patch_size)
    item = example(adapter, probe, "needle", 5, 8, 112, turns=3)
    scene, question, answer, needle, _ = build("needle", 5, 8)
    ids = torch.tensor(item.ids)
    supervised = ids[torch.tensor(item.supervised)]
    first_answer = adapter.encode_text(answer)
    assert supervised[: len(first_answer)].tolist() == first_answer  # the family's question comes first
    assert (supervised == adapter.tokenizer.eos_token_id).sum() == len(item.evidence) == 3
    span = adapter.prepare(media_of(scene, 5, 112), question).layout.frame_spans[round(needle * 7) // 2]
    position, tokens = item.evidence[0]
    assert item.ids[position + 1 : position + 1 + len(first_answer)] == first_answer
    assert tokens and all(span[0] <= t < span[1] for t in tokens)
    colors, shapes = item.targets
    assert colors.shape == shapes.shape == (4 * 4, 2)  # 4 frame groups x 2x2 merged tokens, 2 frames each
    k = round(needle * 7)
    labels = colors[:, k % 2].view(4, 4)[k // 2]
    assert (labels == list(COLORS).index(answer)).any() and (labels <= len(COLORS)).all()
    assert (shapes[:, k % 2].view(4, 4)[k // 2] == SHAPES.index(question.split("the ")[1].rstrip("?"))).any()


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


def test_evidence_loss_is_low_when_head_zero_looks_at_the_evidence():
    from types import SimpleNamespace

    item = SimpleNamespace(evidence=[(3, [1, 2])])

    focused = torch.zeros(1, 2, 5, 5)
    focused[0, 0, 3, 1] = focused[0, 0, 3, 2] = 0.5
    spread = torch.full((1, 2, 5, 5), 0.2)
    assert evidence_loss((focused,), [item], [0]).item() < 1e-6
    assert abs(evidence_loss((spread,), [item], [0]).item() + torch.log(torch.tensor(0.4)).item()) < 1e-6


def test_training_is_deterministic(tmp_path):
    """Same seed, same steps: bit-identical weights (what makes the committed checkpoint reproducible)."""
    from safetensors.torch import load_file

    args = ["--vision-steps", "2", "--steps", "3", "--batch", "2", "--frames", "8", "--eval-every", "100"]
    for name in ("a", "b"):
        assert train_main(["--out", str(tmp_path / name), *args, "--eval-count", "1"]) == 0
    first, second = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
