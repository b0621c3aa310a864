"""Frame sampling and frame-size math (``videoqa.worker.video.sampling``)."""

from __future__ import annotations

import math

import pytest

from videoqa.worker.errors import InvalidInput, LimitExceeded, MediaDecodeError
from videoqa.worker.types import SamplingSpec
from videoqa.worker.video.sampling import cap_indices, sample_indices, scaled_size, uniform_indices

# -- uniform (num_frames) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "k", "expected"),
    [
        (48, 8, [0, 7, 13, 20, 27, 34, 40, 47]),
        (10, 1, [0]),
        (10, 2, [0, 9]),
        (10, 10, list(range(10))),
        (5, 8, [0, 1, 2, 3, 4]),  # fewer frames than asked: all of them
        (1, 4, [0]),
    ],
)
def test_num_frames_spreads_uniformly(n: int, k: int, expected: list[int]) -> None:
    assert sample_indices(n, 24.0, SamplingSpec(num_frames=k)) == expected


def test_num_frames_matches_linspace_rounding() -> None:
    # np.linspace(0, 99, 7).round() = [0, 16.5->16, 33, 49.5->50, 66, 82.5->82, 99] (round half to even)
    assert sample_indices(100, 30.0, SamplingSpec(num_frames=7)) == [0, 16, 33, 50, 66, 82, 99]


def test_indices_are_sorted_distinct_and_in_range() -> None:
    for n in (1, 2, 3, 7, 31, 32, 33, 1000):
        for k in (1, 2, 5, 31, 32):
            idx = sample_indices(n, 24.0, SamplingSpec(num_frames=k, max_frames=32))
            assert idx == sorted(set(idx))
            assert idx[0] >= 0 and idx[-1] < n
            assert len(idx) == min(n, k)


def test_default_frames_when_neither_is_set() -> None:
    assert sample_indices(48, 24.0, SamplingSpec(default_frames=4)) == [0, 16, 31, 47]
    assert sample_indices(3, 24.0, SamplingSpec(default_frames=4)) == [0, 1, 2]


def test_default_frames_are_capped_by_max_frames() -> None:
    assert sample_indices(100, 24.0, SamplingSpec(default_frames=16, max_frames=4)) == [0, 33, 66, 99]


# -- fps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "source_fps", "fps", "expected"),
    [
        (48, 24.0, 2.0, [0, 12, 24, 36]),
        (48, 24.0, 1.0, [0, 24]),
        (10, 30.0, 0.01, [0]),  # one frame per 100 s of a 1/3 s clip
        (30, 29.97, 10.0, [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29]),  # step 2.997, floored
        (5, 24.0, 24.0, [0, 1, 2, 3, 4]),
        (5, 24.0, 1000.0, [0, 1, 2, 3, 4]),  # faster than the source: every frame once
    ],
)
def test_fps_takes_every_nth_frame_from_zero(n: int, source_fps: float, fps: float, expected: list[int]) -> None:
    assert sample_indices(n, source_fps, SamplingSpec(fps=fps, max_frames=64)) == expected


def test_fps_is_capped_uniformly_at_max_frames() -> None:
    # 10 s at 30 fps sampled at 10 fps = 100 frames, thinned to 5 spread over the same span.
    idx = sample_indices(300, 30.0, SamplingSpec(fps=10.0, max_frames=5))
    assert idx == [0, 75, 150, 222, 297]


@pytest.mark.parametrize("bad_source_fps", [0.0, -5.0, math.nan, math.inf])
def test_invalid_source_fps_counts_as_one(bad_source_fps: float) -> None:
    assert sample_indices(10, bad_source_fps, SamplingSpec(fps=0.5)) == [0, 2, 4, 6, 8]


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [0, -1])
def test_num_frames_must_be_positive(num_frames: int) -> None:
    with pytest.raises(InvalidInput) as err:
        sample_indices(48, 24.0, SamplingSpec(num_frames=num_frames))
    assert err.value.field == "sampling.num_frames"
    assert err.value.status == "INVALID_ARGUMENT"


@pytest.mark.parametrize("fps", [0.0, -1.0, math.nan, math.inf])
def test_fps_must_be_a_positive_number(fps: float) -> None:
    with pytest.raises(InvalidInput) as err:
        sample_indices(48, 24.0, SamplingSpec(fps=fps))
    assert err.value.field == "sampling.fps"


def test_num_frames_above_max_frames_is_a_limit() -> None:
    with pytest.raises(LimitExceeded) as err:
        sample_indices(1000, 24.0, SamplingSpec(num_frames=33, max_frames=32))
    assert err.value.field == "sampling.num_frames"
    assert err.value.status == "RESOURCE_EXHAUSTED"
    assert "32" in err.value.message
    assert len(sample_indices(1000, 24.0, SamplingSpec(num_frames=32, max_frames=32))) == 32


def test_num_frames_limit_is_checked_even_for_short_media() -> None:
    with pytest.raises(LimitExceeded):
        sample_indices(3, 24.0, SamplingSpec(num_frames=100, max_frames=32))


@pytest.mark.parametrize("source_frames", [0, -1])
def test_media_without_frames_is_invalid(source_frames: int) -> None:
    with pytest.raises(InvalidInput) as err:
        sample_indices(source_frames, 24.0, SamplingSpec(num_frames=4))
    assert isinstance(err.value, MediaDecodeError)
    assert err.value.field == "media"


def test_both_num_frames_and_fps_is_invalid() -> None:
    with pytest.raises(InvalidInput) as err:
        sample_indices(48, 24.0, SamplingSpec(num_frames=4, fps=2.0))
    assert err.value.field == "sampling"


def test_request_errors_come_before_media_errors() -> None:
    with pytest.raises(InvalidInput) as err:
        sample_indices(0, 24.0, SamplingSpec(fps=-1.0))
    assert err.value.field == "sampling.fps"


@pytest.mark.parametrize("spec", [SamplingSpec(max_frames=0), SamplingSpec(default_frames=0)])
def test_bad_server_limits_are_a_bug(spec: SamplingSpec) -> None:
    with pytest.raises(ValueError):
        sample_indices(48, 24.0, spec)


# -- helpers -----------------------------------------------------------------------------------------


def test_uniform_and_cap_helpers() -> None:
    assert uniform_indices(10, 0) == []
    assert cap_indices([3, 5, 9], 5) == [3, 5, 9]
    assert cap_indices(list(range(0, 100, 10)), 3) == [0, 40, 90]  # position 4.5 rounds to 4


# -- scaled_size -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1280, 720), 448, (448, 252)),
        ((720, 1280), 448, (252, 448)),  # portrait
        ((1920, 1080), 448, (448, 252)),
        ((3840, 2160), 1000, (1000, 562)),  # 562.5 -> 562
        ((448, 448), 448, (448, 448)),
        ((640, 480), 4096, (640, 480)),  # never upscaled
        ((129, 97), 448, (128, 96)),  # odd sides rounded down to even
        ((1000, 10), 100, (100, 2)),  # at least 2
        ((1, 1), 448, (2, 2)),
        ((1001, 500), 447, (446, 222)),  # odd max_side: longest side still fits
    ],
)
def test_scaled_size(size: tuple[int, int], max_side: int, expected: tuple[int, int]) -> None:
    w, h = scaled_size(*size, max_side)
    assert (w, h) == expected
    assert w % 2 == 0 and h % 2 == 0
    assert max(w, h) <= max(max_side, 2)


def test_scaled_size_keeps_aspect_ratio() -> None:
    for width, height in [(1280, 720), (1000, 333), (333, 1000), (4000, 3000), (1080, 1920)]:
        w, h = scaled_size(width, height, 336)
        assert abs(w / h - width / height) / (width / height) < 0.03


@pytest.mark.parametrize(("w", "h", "m"), [(0, 10, 448), (10, -1, 448), (10, 10, 1)])
def test_scaled_size_rejects_nonsense(w: int, h: int, m: int) -> None:
    with pytest.raises(ValueError):
        scaled_size(w, h, m)
