"""Worker configuration: typed, bounded, documented; read from ``VIDEOQA_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20


class WorkerSettings(BaseSettings):
    """Everything a worker needs to run; every field has a default and bounds."""

    model_config = SettingsConfigDict(env_prefix="VIDEOQA_", extra="ignore", use_attribute_docstrings=True)

    models: list[str] = Field(default=["tiny-qwen2-vl"], min_length=1)
    """Model ids to load (``tiny-*``, a local directory, or a hub id); the first is the default."""
    device: str = "cpu"
    """Torch device of the models, e.g. ``cpu`` or ``cuda:0``."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and KV cache dtype."""
    max_upload_bytes: int = Field(default=256 * MiB, ge=1024, le=1 << 34)
    """Largest accepted upload; larger ones are RESOURCE_EXHAUSTED."""
    max_buffered_upload_bytes: int = Field(default=1 << 30, ge=1024, le=1 << 36)
    """Bytes of uploads held in memory at once across all calls; beyond, RESOURCE_EXHAUSTED."""
    max_frames: int = Field(default=64, ge=1, le=4096)
    """Most frames a request may sample."""
    max_images: int = Field(default=512, ge=1, le=100_000)
    """Most images an image-sequence upload may contain."""
    default_frames: int = Field(default=8, ge=1, le=4096)
    """Frames sampled when a request names neither a count nor an fps."""
    max_resolution: int = Field(default=448, ge=28, le=4096)
    """Longest side of a frame in pixels, and the default when a request asks for none."""
    max_question_chars: int = Field(default=4000, ge=1, le=1_000_000)
    """Longest accepted question."""
    max_new_tokens: int = Field(default=1024, ge=1, le=65536)
    """Most tokens one answer may generate."""
    default_max_new_tokens: int = Field(default=128, ge=1, le=65536)
    """Answer length when a request names none."""
    decode_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """Longest a media decode may take before it is abandoned (INVALID_ARGUMENT)."""
    max_sessions: int = Field(default=1024, ge=1, le=1_000_000)
    """Sessions kept in memory at once; beyond this, new sessions are RESOURCE_EXHAUSTED."""
    session_ttl_s: float = Field(default=3600.0, gt=0, le=30 * 86400)
    """Idle time after which a session expires (NOT_FOUND)."""
    max_queued_turns: int = Field(default=64, ge=1, le=100_000)
    """Turns waiting for the model beyond this are refused with RESOURCE_EXHAUSTED."""
