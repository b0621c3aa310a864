"""Decoding uploads in a child process (``MediaDecoder`` + ``decode_child``) with real files from PyAV."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import struct
import threading
import time

import av
import numpy as np
import pytest

from tests.media import corrupt_variants, draw_frame, make_images, make_video, read_frame_index
from videoqa.worker.errors import InvalidInput, LimitExceeded, MediaDecodeError, NotReady, VideoQAError
from videoqa.worker.types import DecodedMedia, MediaKind, SamplingSpec
from videoqa.worker.video.decode import (
    InvalidReply,
    MediaDecoder,
    ReplyLimits,
    ReplyReader,
    encode_error,
    encode_fatal,
    encode_frames,
    encode_ready,
    pack_request,
    read_result,
    read_startup,
    unpack_request,
)

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


# -- the boundary: nothing from the child is trusted -------------------------------------------------
#
# Replies are forged here from the documented format (decode.py's docstring), independently of the
# encoder, and fed through a real pipe.

LIMITS = ReplyLimits(max_frames=4, max_side=64)
INVALID_RESULT = "the decoder returned an invalid result"


def frames_header(**fields) -> bytes:
    """A FRAMES reply header; ``fields`` override a valid 2-frame 16x8 reply."""
    f = {
        "magic": b"VQD1",
        "kind": 3,
        "dtype": 1,
        "channels": 3,
        "count": 2,
        "height": 8,
        "width": 16,
        "n_indices": 2,
        "n_timestamps": 2,
        "source_frames": 10,
        "fps": 5.0,
        "duration": 2.0,
        **fields,
    }
    f.setdefault("frame_bytes", f["count"] * f["height"] * f["width"] * f["channels"])
    return struct.pack("<4sB", f["magic"], f["kind"]) + struct.pack(
        "<BBIIIIIIddQ",
        *(f[k] for k in ("dtype", "channels", "count", "height", "width", "n_indices", "n_timestamps")),
        *(f[k] for k in ("source_frames", "fps", "duration", "frame_bytes")),
    )


def frames_meta(indices=(0, 9), timestamps=(0.0, 1.8)) -> bytes:
    return struct.pack(f"<{len(indices)}I", *indices) + struct.pack(f"<{len(timestamps)}d", *timestamps)


FRAME_BYTES = bytes(range(256)) * 3  # 2 x 8 x 16 x 3 = 768


def error_reply(kind=3, field=1, has_retry=1, retry=1.5, message=b"too many pixels", length=None) -> bytes:
    length = len(message) if length is None else length
    return struct.pack("<4sB", b"VQD1", 4) + struct.pack("<BBBdI", kind, field, has_retry, retry, length) + message


def through_pipe(data: bytes, read):
    """``read(reader)`` on the parent's end of a real pipe whose other end wrote ``data`` and closed."""
    parent_end, child_end = multiprocessing.Pipe(duplex=True)

    def write() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(child_end.fileno(), view) :]
        child_end.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        return read(ReplyReader(parent_end, lambda: True))
    finally:
        parent_end.close()
        writer.join(5)


def read_frames(data: bytes, limits: ReplyLimits = LIMITS):
    return through_pipe(data, lambda reader: read_result(reader, limits))


def test_a_forged_reply_in_the_documented_format_is_read() -> None:
    media = read_frames(frames_header() + frames_meta() + FRAME_BYTES)
    assert isinstance(media, DecodedMedia)
    assert media.frames.shape == (2, 8, 16, 3) and media.frames.dtype == np.uint8
    assert media.frames.tobytes() == FRAME_BYTES and media.frames.flags.writeable
    assert (media.indices, media.timestamps) == ([0, 9], [0.0, 1.8])
    assert (media.source_frames, media.source_fps, media.duration_s) == (10, 5.0, 2.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"magic": b"VQD2"},
        {"magic": b"\x80\x05\x95\x00"},  # a pickle
        {"kind": 1},  # READY after a request
        {"kind": 9},
        {"dtype": 0},
        {"dtype": 2},
        {"channels": 4},
        {"count": 0},
        {"count": 5},  # max_frames is 4
        {"count": 2**32 - 1, "n_indices": 2**32 - 1, "n_timestamps": 2**32 - 1, "source_frames": 2**32 - 1},
        {"height": 65},  # max_side is 64
        {"width": 0},
        {"width": 2**31, "frame_bytes": 2 * 8 * 3 * 2**31},
        {"n_timestamps": 1},
        {"n_indices": 3},
        {"frame_bytes": 767},
        {"frame_bytes": 2**64 - 1},
        {"source_frames": 1},
        {"fps": math.nan},
        {"fps": 0.0},
        {"fps": math.inf},
        {"duration": -1.0},
        {"duration": math.nan},
    ],
)
def test_bad_headers_are_refused_before_reading_further(fields: dict) -> None:
    # Only the header is sent: a parser that went on to read the body would hit EOF instead.
    with pytest.raises(InvalidReply):
        read_frames(frames_header(**fields))


@pytest.mark.parametrize(
    ("indices", "timestamps"),
    [
        ((0, 9), (0.0, math.nan)),
        ((0, 9), (math.inf, 1.0)),
        ((0, 9), (0.0, -math.inf)),
        ((9, 0), (0.0, 1.8)),  # not increasing
        ((3, 3), (0.0, 1.8)),
        ((0, 10), (0.0, 1.8)),  # past the source's 10 frames
    ],
)
def test_bad_indices_or_timestamps_are_refused(indices: tuple, timestamps: tuple) -> None:
    with pytest.raises(InvalidReply):
        read_frames(frames_header() + frames_meta(indices, timestamps))


def test_a_reply_cut_short_is_eof() -> None:
    with pytest.raises(EOFError):
        read_frames(frames_header() + frames_meta() + FRAME_BYTES[:500])
    with pytest.raises(EOFError):
        read_frames(frames_header()[:20])


def test_only_bytes_after_the_reply_count_as_more() -> None:
    whole = frames_header() + frames_meta() + FRAME_BYTES
    for extra, pending in [(b"", False), (b"V", True)]:
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        os.write(child_end.fileno(), whole + extra)
        child_end.close()  # the end of the pipe is there before the parent looks
        reader = ReplyReader(parent_end, lambda: False)
        assert isinstance(read_result(reader, LIMITS), DecodedMedia)
        assert reader.pending() is pending
        parent_end.close()


def test_error_replies() -> None:
    err = through_pipe(error_reply(), lambda r: read_result(r, LIMITS))
    assert type(err) is LimitExceeded
    assert (err.message, err.field, err.retry_after_s) == ("too many pixels", "media", 1.5)
    err = through_pipe(error_reply(kind=1, field=0, has_retry=0, retry=0.0), lambda r: read_result(r, LIMITS))
    assert type(err) is MediaDecodeError and err.field is None and err.retry_after_s is None


@pytest.mark.parametrize(
    "reply",
    [
        error_reply(kind=0),
        error_reply(kind=4),  # not in the allowlist
        error_reply(field=99),
        error_reply(has_retry=2),
        error_reply(retry=math.nan),
        error_reply(retry=-1.0),
        error_reply(retry=1e9),
        error_reply(has_retry=0, retry=2.0),
        error_reply(message=b"x" * 1025),
        error_reply(message=b"", length=2**32 - 1),
        error_reply(message=b"\xff\xfe not utf-8"),
        error_reply(message=b"\x1b[2Jterminal escape"),
        error_reply(message=b"two\nlines"),
    ],
)
def test_bad_error_replies_are_refused(reply: bytes) -> None:
    with pytest.raises(InvalidReply):
        through_pipe(reply, lambda r: read_result(r, LIMITS))


def test_start_up_messages() -> None:
    assert through_pipe(encode_ready(), read_startup) is None
    assert through_pipe(encode_fatal("cannot load 'x:y'"), read_startup) == "cannot load 'x:y'"
    for reply in (frames_header(), error_reply(), b"\x80\x05N."):
        with pytest.raises((InvalidReply, EOFError)):
            through_pipe(reply, read_startup)


def test_encoded_replies_round_trip() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    media = DecodedMedia(frames, [1, 4, 7], [0.1, 0.4, 0.7], 8, 10.0, 0.8)
    data = b"".join(bytes(b) for b in encode_frames(media))
    back = read_frames(data, ReplyLimits(max_frames=3, max_side=12))
    assert np.array_equal(back.frames, frames)
    assert (back.indices, back.timestamps, back.source_frames, back.source_fps, back.duration_s) == (
        [1, 4, 7],
        [0.1, 0.4, 0.7],
        8,
        10.0,
        0.8,
    )
    with pytest.raises(InvalidReply):  # the same reply is too big for smaller limits
        read_frames(data, ReplyLimits(max_frames=2, max_side=12))
    with pytest.raises(InvalidReply):
        read_frames(data, ReplyLimits(max_frames=3, max_side=11))


def test_encoded_errors_keep_to_the_allowlists() -> None:
    def round_trip(exc: VideoQAError) -> VideoQAError:
        return through_pipe(encode_error(exc), lambda r: read_result(r, LIMITS))

    err = round_trip(InvalidInput("bad fps", field="sampling.fps"))
    assert type(err) is InvalidInput and err.field == "sampling.fps"
    err = round_trip(NotReady("x" * 5000 + "\n", field="elsewhere", retry_after_s=math.inf))
    assert type(err) is MediaDecodeError and err.field is None and err.retry_after_s is None
    assert len(err.message.encode()) <= 1024 and err.message.isprintable()
    assert round_trip(MediaDecodeError("é" * 1000, field="media")).message == "é" * 512


def test_encode_frames_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(MediaDecodeError, match="returned int"):
        encode_frames(3)
    with pytest.raises(MediaDecodeError, match="shape"):
        encode_frames(DecodedMedia.from_array(np.zeros((2, 4, 4, 4), np.uint8)))
    with pytest.raises(MediaDecodeError, match="shape"):
        encode_frames(DecodedMedia.from_array(np.zeros((2, 4, 4, 3), np.float32)))
    with pytest.raises(MediaDecodeError, match="out of range"):
        encode_frames(DecodedMedia(np.zeros((1, 4, 4, 3), np.uint8), [-1], [0.0], 1, 1.0, 1.0))


def test_requests_round_trip() -> None:
    # Every SamplingSpec field must travel: a new field fails here until the request carries it.
    spec = SamplingSpec(num_frames=7, fps=None, max_frames=9, max_resolution=321, default_frames=5)
    assert {f.name for f in dataclasses.fields(SamplingSpec)} == {
        "num_frames",
        "fps",
        "max_frames",
        "max_resolution",
        "default_frames",
    }
    assert unpack_request(pack_request(MediaKind.IMAGES, spec, 2.5, 3)) == (MediaKind.IMAGES, spec, 2.5, 3)
    spec = SamplingSpec(num_frames=None, fps=0.25)
    assert unpack_request(pack_request(MediaKind.VIDEO, spec, 1.0, 1)) == (MediaKind.VIDEO, spec, 1.0, 1)
    spec = SamplingSpec(num_frames=0, fps=-1.0)  # invalid, but the child is the one to say so
    assert unpack_request(pack_request(MediaKind.VIDEO, spec, 1.0, 1))[1] == spec
    with pytest.raises(InvalidInput):
        pack_request(MediaKind.VIDEO, SamplingSpec(num_frames=2**70), 1.0, 1)


# -- a compromised child, for real ------------------------------------------------------------------


def test_a_pickle_from_the_child_is_never_unpickled(tmp_path) -> None:
    marker = tmp_path / "unpickled"
    with MediaDecoder(target=f"{TARGETS}:pickle_reply", timeout_s=30.0) as decoder:
        for _ in range(2):
            start = time.monotonic()
            with pytest.raises(MediaDecodeError, match=INVALID_RESULT) as err:
                decoder.decode("video", str(marker).encode(), SamplingSpec())
            assert err.value.field == "media"
            assert time.monotonic() - start < 10  # refused at once, not left to the timeout
    assert not marker.exists()


def test_garbage_from_the_child_is_refused() -> None:
    with (
        MediaDecoder(target=f"{TARGETS}:garbage_reply", timeout_s=30.0) as decoder,
        pytest.raises(MediaDecodeError, match=INVALID_RESULT),
    ):
        decoder.decode("video", b"x", SamplingSpec())


def test_an_oversized_claim_is_refused_without_reading_it() -> None:
    claim = frames_header(count=10**6, n_indices=10**6, n_timestamps=10**6, source_frames=10**6)
    with MediaDecoder(target=f"{TARGETS}:reply_bytes", timeout_s=30.0) as decoder:
        start = time.monotonic()
        with pytest.raises(MediaDecodeError, match=INVALID_RESULT):
            decoder.decode("video", claim, SamplingSpec(max_frames=4, max_resolution=64))
        with pytest.raises(MediaDecodeError, match=INVALID_RESULT):
            decoder.decode("video", frames_header(height=65), SamplingSpec(max_frames=4, max_resolution=64))
        assert time.monotonic() - start < 10
        # The same forged reply is accepted where the request's limits allow it.
        media = decoder.decode("video", frames_header() + frames_meta() + FRAME_BYTES, SamplingSpec(max_frames=2))
        assert media.frames.tobytes() == FRAME_BYTES


def test_a_reply_cut_short_is_a_crash_or_a_timeout() -> None:
    partial = frames_header() + frames_meta() + FRAME_BYTES[:100]
    with (
        MediaDecoder(target=f"{TARGETS}:reply_bytes_and_exit") as decoder,
        pytest.raises(MediaDecodeError, match="crashed"),
    ):
        decoder.decode("video", partial, SamplingSpec())
    with (
        MediaDecoder(target=f"{TARGETS}:reply_bytes", timeout_s=30.0) as decoder,
        pytest.raises(MediaDecodeError, match="longer than 2 s"),
    ):
        decoder.decode("video", partial, SamplingSpec(), timeout_s=2)


def test_a_second_reply_is_refused() -> None:
    video = make_video(None, frames=6, size=(64, 48), fps=6)
    with (
        MediaDecoder(target=f"{TARGETS}:two_replies") as decoder,
        pytest.raises(MediaDecodeError, match=INVALID_RESULT),
    ):
        decoder.decode("video", video, SamplingSpec(num_frames=1))


def test_a_child_that_exits_after_a_whole_reply_is_not_at_fault() -> None:
    whole = frames_header() + frames_meta() + FRAME_BYTES
    with MediaDecoder(target=f"{TARGETS}:reply_bytes_and_exit") as decoder:
        assert decoder.decode("video", whole, SamplingSpec()).frames.tobytes() == FRAME_BYTES
