"""Every setting is typed, has a default and a docstring, and rejects out-of-bounds values."""

from __future__ import annotations

import pydantic
import pytest

from videoqa.service.app import FrontendSettings
from videoqa.worker.settings import WorkerSettings


@pytest.mark.parametrize("cls", [WorkerSettings, FrontendSettings])
def test_every_field_has_default_and_docstring(cls):
    for name, field in cls.model_fields.items():
        assert not field.is_required(), f"{cls.__name__}.{name} has no default"
        assert field.description and len(field.description) > 10, f"{cls.__name__}.{name} has no docstring"
        assert field.annotation is not None


def test_bounds_and_environment(monkeypatch):
    with pytest.raises(pydantic.ValidationError):
        WorkerSettings(max_frames=0)
    with pytest.raises(pydantic.ValidationError):
        WorkerSettings(dtype="int4")
    monkeypatch.setenv("VIDEOQA_MAX_FRAMES", "12")
    monkeypatch.setenv("VIDEOQA_MODELS", '["tiny-qwen2.5-vl"]')
    settings = WorkerSettings()
    assert settings.max_frames == 12 and settings.models == ["tiny-qwen2.5-vl"]
