"""Decoding uploads in a child process (``MediaDecoder`` + ``decode_child``) with real files from PyAV."""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest

from tests.media import corrupt_variants, draw_frame, make_images, make_video, read_frame_index
from videoqa.worker.errors import InvalidInput, LimitExceeded, MediaDecodeError, NotReady, VideoQAError
from videoqa.worker.types import DecodedMedia, MediaKind, SamplingSpec
from videoqa.worker.video.decode import MediaDecoder

TARGETS = "tests.worker.decode_targets"
FRAMES, SIZE, FPS = 48, (128, 96), 24


@pytest.fixture(scope="module")
def decoder():
    with MediaDecoder(timeout_s=30.0) as d:
        yield d


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return make_video(None, frames=FRAMES, size=SIZE, fps=FPS)


def assert_frames(media: DecodedMedia, count: int, height: int, width: int) -> None:
    """Shape (T, H, W, 3) uint8, one index and timestamp per frame, and the right source frames."""
    assert media.frames.shape == (count, height, width, 3)
    assert media.frames.dtype == np.uint8
    assert len(media.indices) == len(media.timestamps) == count
    assert [read_frame_index(f) for f in media.frames] == media.indices
    assert all(b > a for a, b in zip(media.timestamps, media.timestamps[1:], strict=False))


# -- video -------------------------------------------------------------------------------------------


def test_mp4_uniform_sampling(decoder: MediaDecoder, mp4: bytes) -> None:
    media = decoder.decode(MediaKind.VIDEO, mp4, SamplingSpec(num_frames=8))
    assert media.indices == [0, 7, 13, 20, 27, 34, 40, 47]
    assert_frames(media, 8, SIZE[1], SIZE[0])
    assert media.source_frames == FRAMES
    assert media.source_fps == pytest.approx(FPS)
    assert media.duration_s == pytest.approx(FRAMES / FPS, abs=1e-3)
    assert media.timestamps == pytest.approx([i / FPS for i in media.indices], abs=1e-3)
    assert media.frames.flags.writeable
    for frame, index in zip(media.frames, media.indices, strict=True):
        # Same picture as drawn, up to codec loss (mostly at the square's edges).
        diff = np.abs(frame.astype(np.int16) - draw_frame(index, SIZE, FRAMES).astype(np.int16))
        assert diff.mean() < 4, (index, diff.mean())


@pytest.mark.parametrize(("container", "codec"), [("mkv", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4")])
def test_other_containers_and_codecs(decoder: MediaDecoder, container: str, codec: str) -> None:
    video = make_video(None, frames=20, size=(96, 64), fps=10, codec=codec, container=container)
    media = decoder.decode("video", video, SamplingSpec(num_frames=5))
    assert media.indices == [0, 5, 10, 14, 19]
    assert_frames(media, 5, 64, 96)
    assert media.source_frames == 20
    assert media.timestamps == pytest.approx([i / 10 for i in media.indices], abs=2e-3)


@pytest.mark.parametrize(
    ("size", "max_resolution", "expected_hw"),
    [((128, 96), 64, (48, 64)), ((96, 128), 64, (64, 48)), ((128, 96), 100, (74, 100))],
)
def test_frames_are_downscaled_at_decode_time(
    decoder: MediaDecoder, size: tuple[int, int], max_resolution: int, expected_hw: tuple[int, int]
) -> None:
    video = make_video(None, frames=12, size=size, fps=12)
    media = decoder.decode("video", video, SamplingSpec(num_frames=4, max_resolution=max_resolution))
    assert_frames(media, 4, *expected_hw)


@pytest.mark.parametrize("size", [(48, 64), (72, 40), (24, 16)])
def test_widths_decord_lays_out_wrongly(decoder: MediaDecoder, size: tuple[int, int]) -> None:
    # decord 0.6.0 returns (H, W, 4) frames and fails get_batch for these widths, native or resized.
    video = make_video(None, frames=6, size=size, fps=6)
    assert_frames(decoder.decode("video", video, SamplingSpec(num_frames=3)), 3, size[1], size[0])
    big = make_video(None, frames=6, size=(size[0] * 4, size[1] * 4), fps=6)
    media = decoder.decode("video", big, SamplingSpec(num_frames=3, max_resolution=max(size)))
    assert_frames(media, 3, size[1], size[0])


def test_fps_sampling(decoder: MediaDecoder, mp4: bytes) -> None:
    media = decoder.decode("video", mp4, SamplingSpec(fps=2.0))
    assert media.indices == [0, 12, 24, 36]
    assert media.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=1e-3)
    assert media.sampled_fps == pytest.approx(2.0, rel=1e-3)
    assert_frames(media, 4, SIZE[1], SIZE[0])


def test_fps_sampling_is_capped_at_max_frames(decoder: MediaDecoder, mp4: bytes) -> None:
    media = decoder.decode("video", mp4, SamplingSpec(fps=12.0, max_frames=3))
    assert media.indices == [0, 24, 46]
    assert_frames(media, 3, SIZE[1], SIZE[0])


def test_sampling_errors_cross_the_process_boundary(decoder: MediaDecoder, mp4: bytes) -> None:
    with pytest.raises(LimitExceeded) as limit:
        decoder.decode("video", mp4, SamplingSpec(num_frames=40, max_frames=32))
    assert limit.value.field == "sampling.num_frames"
    with pytest.raises(InvalidInput) as invalid:
        decoder.decode("video", mp4, SamplingSpec(fps=0.0))
    assert type(invalid.value) is InvalidInput
    assert invalid.value.field == "sampling.fps"


def test_large_frames_come_back_intact(decoder: MediaDecoder) -> None:
    video = make_video(None, frames=32, size=(640, 480), fps=30)
    media = decoder.decode("video", video, SamplingSpec(num_frames=32, max_resolution=640))
    assert_frames(media, 32, 480, 640)  # 29 MB of frames through the pipe


@pytest.mark.parametrize("name", ["empty", "truncated", "random", "text"])
def test_corrupt_videos_raise_decode_errors(decoder: MediaDecoder, mp4: bytes, name: str) -> None:
    with pytest.raises(MediaDecodeError) as err:
        decoder.decode("video", corrupt_variants(mp4)[name], SamplingSpec())
    message = err.value.message
    assert message.startswith(("could not decode the video", "the video is empty"))
    assert err.value.field == "media"
    assert len(message) < 300 and "hello" not in message  # decord's log echoes the upload: not passed on


def test_av1_is_refused_with_a_clear_message(decoder: MediaDecoder) -> None:
    try:
        video = make_video(None, frames=4, size=(64, 64), codec="libsvtav1")
    except (av.FFmpegError, ValueError) as exc:
        pytest.skip(f"no AV1 encoder: {exc}")
    with pytest.raises(MediaDecodeError, match="AV1"):
        decoder.decode("video", video, SamplingSpec())


# -- images ------------------------------------------------------------------------------------------


def test_images_are_sampled_and_scaled(decoder: MediaDecoder) -> None:
    images = make_images(10, size=(160, 120))
    media = decoder.decode(MediaKind.IMAGES, images, SamplingSpec(num_frames=4, max_resolution=80), image_fps=2.0)
    assert media.indices == [0, 3, 6, 9]
    assert media.timestamps == pytest.approx([0.0, 1.5, 3.0, 4.5])
    assert (media.source_frames, media.source_fps, media.duration_s) == (10, 2.0, 5.0)
    assert_frames(media, 4, 60, 80)


def test_image_fps_defaults_to_one_and_drives_fps_sampling(decoder: MediaDecoder) -> None:
    media = decoder.decode("images", make_images(6, fmt="JPEG"), SamplingSpec(fps=0.5), image_fps=0.0)
    assert media.source_fps == 1.0
    assert media.indices == [0, 2, 4]
    assert media.timestamps == [0.0, 2.0, 4.0]
    assert_frames(media, 3, 96, 128)


def test_images_of_other_sizes_are_resized_to_the_first(decoder: MediaDecoder) -> None:
    images = make_images(1, size=(128, 96)) + make_images(2, size=(200, 40))[1:] + make_images(3, (64, 64))[2:]
    media = decoder.decode("images", images, SamplingSpec())
    assert media.frames.shape == (3, 96, 128, 3)
    assert read_frame_index(media.frames[0]) == 0


def test_a_bad_image_is_named(decoder: MediaDecoder) -> None:
    images = make_images(5)
    images[3] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20
    with pytest.raises(MediaDecodeError, match="image 3") as err:
        decoder.decode("images", images, SamplingSpec(num_frames=5))
    assert err.value.field == "media"
    images[3] = make_images(4, fmt="JPEG")[3][:200]  # truncated JPEG
    with pytest.raises(MediaDecodeError, match="image 3"):
        decoder.decode("images", images, SamplingSpec(num_frames=5))


def test_no_images(decoder: MediaDecoder) -> None:
    with pytest.raises(MediaDecodeError):
        decoder.decode("images", [], SamplingSpec())


def test_bad_kind_or_payload_type(decoder: MediaDecoder, mp4: bytes) -> None:
    with pytest.raises(InvalidInput, match="kind"):
        decoder.decode("audio", mp4, SamplingSpec())
    with pytest.raises(InvalidInput):
        decoder.decode("video", [mp4], SamplingSpec())
    with pytest.raises(InvalidInput):
        decoder.decode("images", mp4, SamplingSpec())
    with pytest.raises(InvalidInput):
        decoder.decode("images", ["not bytes"], SamplingSpec())
    assert decoder.decode("video", memoryview(mp4), SamplingSpec(num_frames=1)).indices == [0]


# -- isolation ---------------------------------------------------------------------------------------


def test_a_crashing_decoder_is_replaced(mp4: bytes) -> None:
    with MediaDecoder(target=f"{TARGETS}:abort_on_empty") as decoder:
        assert decoder.decode("video", mp4, SamplingSpec(num_frames=2)).indices == [0, 47]
        with pytest.raises(MediaDecodeError, match="crashed") as err:
            decoder.decode("video", b"", SamplingSpec())
        assert err.value.field == "media"
        assert decoder.decode("video", mp4, SamplingSpec(num_frames=2)).indices == [0, 47]


def test_always_crashing_target(mp4: bytes) -> None:
    with MediaDecoder(target=f"{TARGETS}:abort") as decoder:
        for _ in range(2):
            with pytest.raises(MediaDecodeError, match="crashed"):
                decoder.decode("video", mp4, SamplingSpec())


def test_a_hanging_decoder_times_out_and_is_replaced(mp4: bytes) -> None:
    with MediaDecoder(target=f"{TARGETS}:hang_on_empty", timeout_s=30.0) as decoder:
        decoder.decode("video", mp4, SamplingSpec())  # warm: start-up is not part of the timeout
        start = time.monotonic()
        with pytest.raises(MediaDecodeError, match="longer than 2 s"):
            decoder.decode("video", b"", SamplingSpec(), timeout_s=2)
        assert 1.9 < time.monotonic() - start < 6
        assert_frames(decoder.decode("video", mp4, SamplingSpec(num_frames=3)), 3, SIZE[1], SIZE[0])


@pytest.mark.parametrize(
    ("target", "error", "field", "match"),
    [
        ("limit", LimitExceeded, "media", "too many pixels"),
        ("bug", MediaDecodeError, "media", "ZeroDivisionError"),
        ("not_media", MediaDecodeError, "media", "returned int"),
    ],
)
def test_child_errors_are_re_raised(mp4: bytes, target: str, error: type[VideoQAError], field: str, match: str) -> None:
    with MediaDecoder(target=f"{TARGETS}:{target}") as decoder:
        with pytest.raises(error, match=match) as err:
            decoder.decode("video", mp4, SamplingSpec())
        assert type(err.value) is error
        assert err.value.field == field
        if target == "limit":
            assert err.value.retry_after_s == 1.5


def test_unloadable_target_is_not_a_media_error(mp4: bytes) -> None:
    with MediaDecoder(target=f"{TARGETS}:no_such_function") as decoder:
        with pytest.raises(VideoQAError, match="no_such_function") as err:
            decoder.decode("video", mp4, SamplingSpec())
        assert not isinstance(err.value, InvalidInput)


def test_concurrent_calls(mp4: bytes) -> None:
    results: dict[int, list[int]] = {}
    failures: list[BaseException] = []

    def work(k: int) -> None:
        try:
            results[k] = decoder.decode("video", mp4, SamplingSpec(num_frames=k)).indices
        except BaseException as exc:
            failures.append(exc)

    with MediaDecoder(max_children=2, max_tasks_per_child=2) as decoder:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not failures
    assert {k: len(v) for k, v in results.items()} == {k: k for k in range(1, 7)}


def test_close(mp4: bytes) -> None:
    decoder = MediaDecoder(target=f"{TARGETS}:hang_on_empty")
    decoder.decode("video", mp4, SamplingSpec())
    errors: list[BaseException] = []
    stuck = threading.Thread(target=lambda: _catch(errors, decoder.decode, "video", b"", SamplingSpec()))
    stuck.start()
    time.sleep(0.3)
    decoder.close()
    stuck.join(10)
    assert not stuck.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], NotReady)
    with pytest.raises(NotReady):
        decoder.decode("video", mp4, SamplingSpec())


def _catch(errors: list[BaseException], fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:
        errors.append(exc)
