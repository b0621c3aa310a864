"""Helpers for pruning tests: run a method on a tiny model's prefill."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from videoqa.worker.types import DecodedMedia, PruningSpec


def media(frames: int = 8, seed: int = 0, size: tuple[int, int] = (96, 128)) -> DecodedMedia:
    rng = np.random.RandomState(seed)
    return DecodedMedia.from_array((rng.rand(frames, *size, 3) * 255).astype(np.uint8))


@dataclass
class Pruned:
    """One pruned prefill: the model, its generator, the pipeline, the state and what pruning did."""

    lm: Any
    gen: Any
    pipeline: Any
    state: Any
    logits: Any
    result: Any


@pytest.fixture(scope="session")
def pruned(tiny_model):
    """``pruned(model_id, method, budget, aware=True, frames=8, **params) -> Pruned``."""
    from videoqa.worker.model.generate import ModelRunner
    from videoqa.worker.pruning.pipeline import PrunedPrefill
    from videoqa.worker.pruning.registry import build_method

    def run(model_id: str, method: str, budget: float, aware: bool = True, frames: int = 8, **params):
        lm = tiny_model(model_id)
        gen = ModelRunner(lm)
        pipeline = PrunedPrefill(gen, build_method(PruningSpec(method, params, budget)), aware)
        prompt = lm.adapter.prepare(media(frames), "what is in the video?" if aware else None)
        state, logits = pipeline.prefill(prompt)
        result = pipeline.prune(state)
        return Pruned(lm, gen, pipeline, state, logits, result)

    return run
