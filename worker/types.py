"""Plain data exchanged between the service layer and the worker runtime (no torch, no proto)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class MediaKind(str, enum.Enum):
    VIDEO = "video"
    IMAGES = "images"


@dataclass(frozen=True)
class SamplingSpec:
    """How frames are taken from the media. Exactly one of ``num_frames`` / ``fps`` may be set;
    neither means the server default frame count (``default_frames``)."""

    num_frames: int | None = None
    fps: float | None = None
    #: Upper bound on sampled frames (already resolved against the server limit).
    max_frames: int = 32
    #: Longest side of a decoded frame in pixels; frames are downscaled, never upscaled.
    max_resolution: int = 448
    #: Frame count used when neither ``num_frames`` nor ``fps`` is given.
    default_frames: int = 8


@dataclass
class DecodedMedia:
    """Frames sampled from an upload.

    ``frames`` has shape (T, H, W, 3), dtype uint8, RGB. ``indices[i]`` is the source frame number
    (or image index) of frame i and ``timestamps[i]`` its presentation time in seconds.
    """

    frames: np.ndarray
    indices: list[int]
    timestamps: list[float]
    source_frames: int
    source_fps: float
    duration_s: float

    @property
    def sampled_fps(self) -> float:
        """Frames per second of the sampled sequence (what temporal position ids assume)."""
        if len(self.timestamps) < 2:
            return self.source_fps or 1.0
        span = self.timestamps[-1] - self.timestamps[0]
        return (len(self.timestamps) - 1) / span if span > 0 else (self.source_fps or 1.0)


@dataclass(frozen=True)
class PruningSpec:
    method: str = "full"
    params: dict[str, float] = field(default_factory=dict)
    #: Fraction of visual tokens kept, in (0, 1].
    budget: float = 1.0


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    #: 0 means greedy.
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
