"""Which frames to take from a video or an image sequence, and at what size. Pure functions."""

from __future__ import annotations

import math

import numpy as np

from videoqa.worker.errors import InvalidInput, LimitExceeded, MediaDecodeError
from videoqa.worker.types import SamplingSpec


def sample_indices(source_frames: int, source_fps: float, spec: SamplingSpec) -> list[int]:
    """Sorted, distinct source frame indices to decode, at most ``spec.max_frames`` of them.

    - ``spec.num_frames = k``: k indices spread uniformly over ``[0, source_frames - 1]``
      (all frames when the source is shorter than k).
    - ``spec.fps = r``: every ``source_fps / r``-th frame, starting at frame 0.
    - neither: ``spec.default_frames`` uniform indices.

    The result is then thinned uniformly to ``spec.max_frames``. A ``source_fps`` that is not a
    positive finite number is taken as 1.0.

    Raises ``InvalidInput`` (bad ``num_frames`` / ``fps``), ``LimitExceeded`` (``num_frames`` above
    ``max_frames``) and ``MediaDecodeError`` (an ``InvalidInput``: the media has no frames).
    """
    _validate_spec(spec)
    if source_frames <= 0:
        raise MediaDecodeError("the media contains no frames", field="media")
    if spec.num_frames is not None:
        indices = uniform_indices(source_frames, spec.num_frames)
    elif spec.fps is not None:
        indices = _fps_indices(source_frames, _valid_fps(source_fps), spec.fps)
    else:
        indices = uniform_indices(source_frames, spec.default_frames)
    return cap_indices(indices, spec.max_frames)


def _validate_spec(spec: SamplingSpec) -> None:
    if spec.max_frames < 1 or spec.default_frames < 1:
        raise ValueError(f"bad server sampling limits: {spec}")
    if spec.num_frames is not None and spec.fps is not None:
        raise InvalidInput("set either sampling.num_frames or sampling.fps, not both", field="sampling")
    if spec.num_frames is not None:
        if spec.num_frames <= 0:
            raise InvalidInput("sampling.num_frames must be at least 1", field="sampling.num_frames")
        if spec.num_frames > spec.max_frames:
            raise LimitExceeded(
                f"sampling.num_frames is {spec.num_frames}, the limit is {spec.max_frames}",
                field="sampling.num_frames",
            )
    if spec.fps is not None and not (math.isfinite(spec.fps) and spec.fps > 0):
        raise InvalidInput("sampling.fps must be a positive number", field="sampling.fps")


def _valid_fps(fps: float) -> float:
    return fps if math.isfinite(fps) and fps > 0 else 1.0


def uniform_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread uniformly over ``[0, n - 1]`` (first and last included); all ``n`` if k >= n."""
    if k >= n:
        return list(range(n))
    if k <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def _fps_indices(n: int, source_fps: float, fps: float) -> list[int]:
    """Frame ``floor(j * source_fps / fps)`` for j = 0, 1, ... while below ``n`` (deduplicated)."""
    step = source_fps / fps
    if step <= 1:
        return list(range(n))
    count = math.ceil(n / step)
    return sorted({min(n - 1, math.floor(j * step)) for j in range(count)})


def cap_indices(indices: list[int], max_frames: int) -> list[int]:
    """Thin ``indices`` uniformly (keeping the first and last) to at most ``max_frames`` entries."""
    if len(indices) <= max_frames:
        return list(indices)
    return [indices[p] for p in uniform_indices(len(indices), max_frames)]


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) with the aspect ratio of ``width`` x ``height`` and the longest side <= ``max_side``.

    Never upscales; both sides are rounded down to even numbers and are at least 2 (video codecs
    and the vision processors want even sizes).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid frame size {width}x{height}")
    if max_side < 2:
        raise ValueError(f"max_side must be at least 2, got {max_side}")
    longest = max(width, height)
    if longest > max_side:
        width = round(width * max_side / longest) if width != longest else max_side
        height = round(height * max_side / longest) if height != longest else max_side
    return _even(width), _even(height)


def _even(x: int) -> int:
    return max(2, x // 2 * 2)
