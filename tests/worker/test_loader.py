"""Models load from a local directory through the same path as a hub id, for every family."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAMILIES
from tests.worker.test_generate import media
from videoqa.worker.errors import InvalidInput
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.model.loader import load_model


@pytest.mark.parametrize("model_id", FAMILIES)
def test_save_pretrained_directory_loads_and_matches(model_id, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    built = tiny_model(model_id)
    built.model.save_pretrained(tmp_path)
    built.processor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.family == built.family
    assert loaded.kv_bytes_per_token == built.kv_bytes_per_token
    assert loaded.revision != built.revision or loaded.revision  # both identify their source
    question = "what is in the video?"
    _, want = ModelRunner(built).prefill(built.adapter.prepare(media(), question))
    _, got = ModelRunner(loaded).prefill(loaded.adapter.prepare(media(), question))
    assert torch.allclose(want, got, atol=1e-5)


def test_revision_changes_with_weights(tiny_model, tmp_path):
    built = tiny_model("tiny-qwen2-vl")
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        built.model.save_pretrained(directory)
        built.processor.save_pretrained(directory)
    assert load_model(str(first)).revision == load_model(str(second)).revision
    changed = load_model(str(second))
    with torch.no_grad():
        changed.model.lm_head.weight.add_(1.0)
    changed.model.save_pretrained(second)
    assert load_model(str(second)).revision != load_model(str(first)).revision


def test_unknown_dtype_is_refused():
    with pytest.raises(InvalidInput):
        load_model("tiny-qwen2-vl", dtype="int3")


def test_the_embedded_demo_model_ships_in_the_package_and_answers(monkeypatch):
    """`videoqa-demo` (the default) loads from the package, offline, and answers a suite question."""
    from videoqa.lab.curriculum_v2 import media_of
    from videoqa.lab.suite_v2 import build
    from videoqa.worker.model.loader import BUILTIN_CHECKPOINTS, DEFAULT_MODEL
    from videoqa.worker.settings import WorkerSettings
    from videoqa.worker.types import GenerationParams

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert WorkerSettings().models[0] == DEFAULT_MODEL == "videoqa-demo"
    assert (BUILTIN_CHECKPOINTS[DEFAULT_MODEL] / "model.safetensors").is_file()
    lm = load_model(DEFAULT_MODEL)
    assert lm.family == "qwen3_vl" and lm.num_layers == 4
    right = 0
    for seed in range(2_000_000, 2_000_012):
        scene, question = build("last_frames", seed, 16)
        gen = ModelRunner(lm)
        state, logits = gen.prefill(lm.adapter.prepare(media_of(scene, seed), question.text))
        text = lm.tokenizer.decode(list(gen.stream(state, logits, GenerationParams(4))), skip_special_tokens=True)
        right += text.strip() == question.answer
    assert right >= 9, f"{right}/12 last-frame questions answered right"


def test_the_demo_model_is_found_in_its_own_distribution_outside_a_checkout(monkeypatch, tmp_path):
    """A built install has no worker/model/demo beside the loader: the videoqa-demo-model
    distribution (the server extra's) provides the files; without it, the error says what to install."""
    import videoqa_demo_model

    from videoqa.worker.model import loader

    monkeypatch.setattr(loader, "__file__", str(tmp_path / "loader.py"))  # no demo/ beside it
    assert loader._demo_checkpoint() == videoqa_demo_model.PATH
    assert (videoqa_demo_model.PATH / "model.safetensors").is_file()
    monkeypatch.setitem(loader.BUILTIN_CHECKPOINTS, "videoqa-demo", tmp_path / "demo")
    with pytest.raises(FileNotFoundError, match="pip install videoqa-demo-model"):
        load_model("videoqa-demo")
