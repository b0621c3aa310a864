"""Media decoding proper. Runs inside the decoder child process (see ``decode.MediaDecoder``).

decord can abort or segfault on some real-world files, and it parses untrusted uploads, so nothing
in the serving process calls this module directly, and the serving process does not trust what
comes back (see ``decode``: raw frames and fixed-format errors, checked against the request's
limits, never pickles). Every error the caller should see is a ``VideoQAError``; anything else that
escapes is turned into a ``MediaDecodeError`` by the child's serving loop (``decode._serve_one``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TypeVar

import decord
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from videoqa.worker.errors import LimitExceeded, MediaDecodeError, VideoQAError
from videoqa.worker.types import DecodedMedia, SamplingSpec
from videoqa.worker.video.sampling import sample_indices, scaled_size

#: How much of the captured decoder log is read back to explain a failure.
_LOG_TAIL_BYTES = 4096
_MAX_REASON_CHARS = 160
#: How much wider than asked a frame may be decoded to dodge decord's broken widths (see _open_reader).
_MAX_EXTRA_WIDTH = 16

T = TypeVar("T")


def decode_media(kind: str, payload: bytes | Sequence[bytes], spec: SamplingSpec, image_fps: float) -> DecodedMedia:
    """Decode and sample ``payload``: one video file (``kind="video"``) or encoded images (``"images"``).

    Returns frames of shape (T, H, W, 3) uint8 RGB with T <= ``spec.max_frames`` and
    max(H, W) <= ``spec.max_resolution``.
    """
    if kind == "video":
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise MediaDecodeError("a video must be given as bytes", field="media")
        return decode_video(bytes(payload), spec)
    if kind == "images":
        return decode_images(list(payload), spec, image_fps)
    raise MediaDecodeError(f"unknown media kind {kind!r}", field="media")


# ---------------------------------------------------------------------------------------------------------
# Video


def decode_video(data: bytes, spec: SamplingSpec) -> DecodedMedia:
    """Decode the frames of one video file chosen by ``spec``; frames (T, H, W, 3) uint8 RGB."""
    if not data:
        raise MediaDecodeError("the video is empty", field="media")
    reader, decode_size, size = _open_reader(data, spec.max_resolution)
    source_frames = len(reader)
    fps = _positive_or(_decord_call(reader.get_avg_fps), 1.0)
    indices = sample_indices(source_frames, fps, spec)
    frames = _decord_call(lambda: reader.get_batch(indices).asnumpy())
    _check_frames(frames, len(indices), decode_size)
    if decode_size != size:
        frames = np.stack([np.asarray(_resized(Image.fromarray(f), size)) for f in frames])
    return DecodedMedia(
        frames=frames,
        indices=indices,
        timestamps=_timestamps(reader, indices, fps),
        source_frames=source_frames,
        source_fps=fps,
        duration_s=_duration(reader, source_frames, fps),
    )


def _open_reader(data: bytes, max_side: int) -> tuple[decord.VideoReader, tuple[int, int], tuple[int, int]]:
    """A reader, the (width, height) it decodes to, and the output (width, height) that fits ``max_side``.

    decord cannot report the frame size without decoding, so the first frame is decoded at full
    size and the file is opened again with a decode-time resize when it is too large (faster and
    lighter than resizing full-size frames). decord 0.6.0 returns a broken frame layout for a few
    frame widths (2, 4, 6, 8, 12, 16, 24, 48, 72 px: rows padded to 32 pixels read as a 4th
    channel, then ``get_batch`` fails); for those it decodes a little wider and the caller resizes.
    """
    reader = _new_reader(data)
    first = _first_frame(reader)
    native = (first.shape[1], first.shape[0])
    size = scaled_size(*native, max_side)
    if size == native and first.shape[2] == 3:
        return reader, size, size
    for width in range(size[0], size[0] + _MAX_EXTRA_WIDTH + 1, 2):
        if (width, size[1]) == native:
            continue  # the native layout is the broken one
        candidate = _new_reader(data, (width, size[1]))
        if _first_frame(candidate).shape == (size[1], width, 3):
            return candidate, (width, size[1]), size
    raise MediaDecodeError(f"the decoder cannot produce {size[0]}x{size[1]} frames", field="media")


def _first_frame(reader: decord.VideoReader) -> np.ndarray:
    """Frame 0 as decord returns it, (H, W, C) uint8; C is 3 unless decord's layout bug hit."""
    frame = _decord_call(lambda: reader.next().asnumpy())
    if frame.ndim != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise MediaDecodeError(f"the decoder returned a frame of shape {frame.shape}", field="media")
    return frame


def _new_reader(data: bytes, size: tuple[int, int] | None = None) -> decord.VideoReader:
    width, height = size or (-1, -1)
    error: Exception | None = None
    # decord logs "ERROR opening: <the whole upload>, <reason>" to stderr: only the reason is kept.
    with _captured_stderr() as log:
        try:
            reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), width=width, height=height, num_threads=1)
            count = len(reader)
        except Exception as exc:
            error = exc
    if error is not None:
        raise _decode_error(error, log) from error
    if count <= 0:
        raise MediaDecodeError("the video contains no frames", field="media")
    return reader


def _decord_call(fn: Callable[[], T]) -> T:
    """Run ``fn()`` and turn any decoder exception into a ``MediaDecodeError``."""
    try:
        return fn()
    except VideoQAError:
        raise
    except Exception as exc:
        raise _decode_error(exc) from exc


def _decode_error(exc: BaseException, log: list[str] | None = None) -> MediaDecodeError:
    return MediaDecodeError(f"could not decode the video: {_reason(exc, log or [])}", field="media")


def _reason(exc: BaseException, log: list[str]) -> str:
    """A short, printable explanation of a decord failure, for the API caller.

    decord messages look like ``[12:00:00] /src/video/video_reader.cc:151: Check failed: ... ERROR
    cannot find video stream ...`` (DECORDError, sometimes with the prefix twice), ``Error reading
    123 bytes...`` (RuntimeError, the real cause then only being in the captured log) or a
    UnicodeDecodeError when decord's own message contains bytes of the upload.
    """
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^(\[[\d:]+\] \S+:\d+: )+", "", first_line)
    if "cannot find video stream" in text:
        return "no video stream this decoder can read (note: AV1 is not supported)"
    if text.startswith("Error reading"):
        return "; ".join(log) if log else "not a video file this decoder can read"
    if isinstance(exc, UnicodeDecodeError) or "Check failed" in text:
        return "the video data is corrupt or in an unsupported format"
    return _printable(text)


def _printable(text: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text).strip()
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Redirect fd 2 to a temporary file; on exit the list holds the decoder's reasons (ffmpeg messages
    and the error of the last "ERROR opening" line), never the raw log, which echoes the upload."""
    reasons: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield reasons
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            reasons.extend(_log_reasons(_tail(tmp)))


def _tail(f: IO[bytes]) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - _LOG_TAIL_BYTES))
    return f.read().decode("utf-8", "replace")


def _log_reasons(log: str) -> list[str]:
    """ffmpeg's ``[mov,mp4 @ 0x..] moov atom not found`` messages and the reason after the uri of the
    last ``ERROR opening: <uri>, <reason>`` line (the uri is the upload itself and may span lines)."""
    reasons: list[str] = []
    last_open = log.rfind("ERROR opening:")
    head, tail = (log[:last_open], log[last_open:]) if last_open >= 0 else (log, "")
    for line in head.splitlines():
        m = re.match(r"^\[[^\]]+ @ 0x[0-9a-f]+\] (.+)$", line.strip())
        if m and m.group(1) not in reasons:
            reasons.append(_printable(m.group(1)))
    if tail:
        last_line = tail.rstrip("\n").rsplit("\n", 1)[-1]
        reasons.append(_printable(last_line.rsplit(", ", 1)[-1]))
    return reasons[-3:]


def _check_frames(frames: np.ndarray, count: int, size: tuple[int, int]) -> None:
    expected = (count, size[1], size[0], 3)
    if frames.dtype != np.uint8 or frames.shape != expected:
        raise MediaDecodeError(
            f"the decoder returned frames of shape {frames.shape} ({frames.dtype}), expected {expected}",
            field="media",
        )


def _timestamps(reader: decord.VideoReader, indices: list[int], fps: float) -> list[float]:
    """Start time of each sampled frame in seconds; ``index / fps`` when the file's timestamps are
    unusable (not finite or not increasing)."""
    ts = _decord_call(lambda: reader.get_frame_timestamp(indices))[:, 0].astype(np.float64)
    if len(ts) and np.all(np.isfinite(ts)) and np.all(np.diff(ts) > 0):
        return [float(t) for t in ts]
    return [i / fps for i in indices]


def _duration(reader: decord.VideoReader, source_frames: int, fps: float) -> float:
    """End time of the last frame, or ``source_frames / fps`` when the file does not say."""
    end = float(_decord_call(lambda: reader.get_frame_timestamp([source_frames - 1]))[0, 1])
    return end if math.isfinite(end) and end > 0 else source_frames / fps


def _positive_or(value: float, default: float) -> float:
    value = float(value)
    return value if math.isfinite(value) and value > 0 else default


# ---------------------------------------------------------------------------------------------------------
# Image sequences


def decode_images(images: list[bytes], spec: SamplingSpec, image_fps: float) -> DecodedMedia:
    """Decode the images chosen by ``spec`` (image i shown at ``i / image_fps`` s).

    Frames (T, H, W, 3) uint8 RGB, all resized to the scaled size of the first sampled image.
    Images that are not sampled are not decoded.
    """
    if not images:
        raise MediaDecodeError("no images were uploaded", field="media")
    fps = _positive_or(image_fps, 1.0)
    indices = sample_indices(len(images), fps, spec)
    first = _open_image(images[indices[0]], indices[0])
    size = scaled_size(*first.size, spec.max_resolution)
    frames = np.empty((len(indices), size[1], size[0], 3), dtype=np.uint8)
    for slot, index in enumerate(indices):
        image = first if slot == 0 else _open_image(images[index], index)
        frames[slot] = np.asarray(_resized(image, size))
    return DecodedMedia(
        frames=frames,
        indices=indices,
        timestamps=[i / fps for i in indices],
        source_frames=len(images),
        source_fps=fps,
        duration_s=len(images) / fps,
    )


def _open_image(data: bytes, index: int) -> Image.Image:
    """Decode one image to RGB, applying its EXIF orientation."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except Image.DecompressionBombError as exc:
        raise LimitExceeded(f"image {index} has too many pixels", field="media") from exc
    except UnidentifiedImageError as exc:
        raise MediaDecodeError(f"image {index} is not in a supported image format", field="media") from exc
    except Exception as exc:
        reason = _printable(str(exc))
        raise MediaDecodeError(f"could not decode image {index}: {reason}", field="media") from exc


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)
