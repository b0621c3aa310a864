"""Shared fixtures: tiny models built once per test session."""

from __future__ import annotations

import functools

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(model_id) -> LoadedModel``, cached for the whole run."""
    from videoqa.worker.model.loader import load_model

    return functools.lru_cache(maxsize=None)(load_model)
