"""Media decoding isolated in child processes, behind a boundary that does not trust the child.

decord can abort, segfault or hang on some real-world files (dmlc/decord#25, #99, #229), and it
parses untrusted uploads, so the serving process never calls it: ``MediaDecoder`` hands each upload
to a warm child process started with the "spawn" context, waits for the reply with a deadline, and
replaces the child when it dies, overruns or breaks the protocol. A decoder exploit must not become
code execution in the worker, so nothing the child sends is unpickled or evaluated: the parent
reads the child's replies from the raw socket with exact, bounded reads (never ``Connection.recv``,
which unpickles), and checks every field against the limits of the request before using it.

Parent -> child (the parent is trusted): a fixed ``struct`` request (``_REQUEST``: media kind,
sampling, image fps, number of parts), then the upload as raw byte messages (the video file, or one
message per image); an empty message asks the child to exit.

Child -> parent, little-endian, one reply per request and nothing else:

- every reply starts with ``_PREFIX``: magic ``b"VQD1"``, reply kind (u8);
- ``READY`` (once, at start-up): nothing more. ``FATAL`` (start-up failed): ``_FATAL_HEADER``
  (message length, u32), then the message (UTF-8, printable, at most ``_MAX_MESSAGE_BYTES``);
- ``FRAMES``: ``_FRAMES_HEADER``: dtype code (u8, only 1 = uint8), channels (u8, only 3), frame count,
  height, width, number of indices, number of timestamps, source frames (u32 each), source fps,
  duration in seconds (f64 each), frame bytes (u64); then the indices (u32 x count), the timestamps
  (f64 x count) and the frames (count x height x width x 3 bytes, C order). Accepted only with
  1 <= count <= ``spec.max_frames``, 1 <= height, width <= ``spec.max_resolution``, frame bytes
  = count x height x width x 3 (so bounded by the limits), as many indices and timestamps as
  frames, indices strictly increasing and below the source frames, timestamps finite, fps finite
  and positive, duration finite and not negative. The frames are read straight into the array;
- ``ERROR``: ``_ERROR_HEADER``: error kind (u8, from ``_ERROR_KINDS``), field (u8, from ``_FIELDS``),
  whether a retry hint follows (u8), the hint in seconds (f64, 0 to ``_MAX_RETRY_AFTER_S``),
  message length (u32); then the message (as for ``FATAL``).

Anything else (bad magic, unknown kind, a field out of range, bytes after the reply) raises
``InvalidReply``: the child is killed and the caller gets ``MediaDecodeError`` ("the decoder
returned an invalid result"). A warm child serves several uploads, one at a time, and is replaced
after ``max_tasks_per_child`` of them: a compromised child could return frames of an earlier upload
within that window, but it cannot run code in the worker nor make it allocate beyond the limits.

This module does not import decord; the child imports the decoder ``target``.
"""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing
import os
import signal
import struct
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from videoqa.worker import errors
from videoqa.worker.errors import InvalidInput, LimitExceeded, MediaDecodeError, NotReady, VideoQAError
from videoqa.worker.types import DecodedMedia, MediaKind, SamplingSpec

log = logging.getLogger(__name__)

DEFAULT_TARGET = "videoqa.worker.video.decode_child:decode_media"

_CTX = multiprocessing.get_context("spawn")
#: How often a waiting caller checks that its child is still alive.
_POLL_S = 0.25

Payload = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]


class MediaDecoder:
    """Decodes uploads in a small pool of child processes; thread-safe.

    ``target`` is an importable ``"module:function"`` with the signature of
    ``decode_child.decode_media(kind, payload, spec, image_fps) -> DecodedMedia``; the child
    imports it when it starts, so a warm child has decord loaded already.

    At most ``max_children`` decodes run at once (further callers wait for a free child). A child is
    replaced after a crash, a timeout, or ``max_tasks_per_child`` decodes (decord leaks memory).
    """

    def __init__(
        self,
        timeout_s: float = 60.0,
        target: str = DEFAULT_TARGET,
        *,
        max_children: int = 2,
        start_timeout_s: float = 60.0,
        max_tasks_per_child: int = 100,
        prestart: bool = True,
    ) -> None:
        if ":" not in target:
            raise ValueError(f"target must be 'module:function', got {target!r}")
        if max_children < 1 or timeout_s <= 0 or start_timeout_s <= 0 or max_tasks_per_child < 1:
            raise ValueError("max_children, timeouts and max_tasks_per_child must be positive")
        self.timeout_s = timeout_s
        self.target = target
        self.start_timeout_s = start_timeout_s
        self.max_tasks_per_child = max_tasks_per_child
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_children)
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._closed = False
        if prestart:
            self._add_warm_child()

    def __enter__(self) -> MediaDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def decode(
        self,
        kind: MediaKind | str,
        payload: Payload,
        spec: SamplingSpec,
        image_fps: float = 1.0,
        timeout_s: float | None = None,
    ) -> DecodedMedia:
        """Decode ``payload`` (a video file's bytes, or a list of encoded images) in a child process.

        Returns frames (T, H, W, 3) uint8 RGB. Blocks until done. Raises the ``VideoQAError`` the
        decoder raised (same class, message and field), ``MediaDecodeError`` when the child crashed,
        overran ``timeout_s`` (default: the decoder's) or failed otherwise, ``NotReady`` after
        ``close()`` or when no child could be started.
        """
        kind = _media_kind(kind)
        parts = _payload_parts(kind, payload)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        with self._slots:
            child = self._checkout()
            try:
                child.wait_ready(self.start_timeout_s)
                return child.decode(kind, parts, spec, image_fps, timeout)
            except MediaDecodeError:
                if self._closed and not child.alive:
                    raise NotReady("the media decoder was shut down") from None
                raise
            finally:
                self._checkin(child)

    def close(self) -> None:
        """Terminate every child process; later ``decode`` calls raise ``NotReady``."""
        with self._lock:
            self._closed = True
            busy = set(self._busy)
            children = [*self._idle, *busy]
            self._idle.clear()
        for child in children:
            child.kill()
            if child not in busy:
                child.conn.close()

    # -- pool -------------------------------------------------------------------------------------------

    def _checkout(self) -> _Child:
        with self._lock:
            if self._closed:
                raise NotReady("the media decoder was shut down")
            child = self._idle.pop() if self._idle else None
        if child is None or not child.alive:
            if child is not None:
                child.kill()
            child = _Child(self.target)
        with self._lock:
            if self._closed:
                child.kill()
                raise NotReady("the media decoder was shut down")
            self._busy.add(child)
        return child

    def _checkin(self, child: _Child) -> None:
        retire = not child.alive or child.tasks >= self.max_tasks_per_child
        with self._lock:
            self._busy.discard(child)
            keep = not self._closed and not retire
            if keep:
                self._idle.append(child)
            replace = not self._closed and not self._idle
        if not keep:
            child.stop()
        if replace:
            self._add_warm_child()

    def _add_warm_child(self) -> None:
        """Start a child now so that the next call does not pay the interpreter start-up."""
        child = _Child(self.target)
        with self._lock:
            if self._closed:
                child.kill()
            else:
                self._idle.append(child)


class _Child:
    """One decoder process and the parent's end of its pipe. Used by one caller at a time."""

    def __init__(self, target: str) -> None:
        parent_end, child_end = _CTX.Pipe(duplex=True)
        self.process = _CTX.Process(
            target=_child_main, args=(child_end, target), name="videoqa-media-decoder", daemon=True
        )
        self.process.start()
        child_end.close()  # so that the child's death reads as EOF here
        self.conn = parent_end
        self.reader = ReplyReader(parent_end, lambda: self.alive)
        self.ready = False
        self.tasks = 0
        self.dead = False
        self._kill_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return not self.dead and self.process.is_alive()

    def wait_ready(self, timeout_s: float) -> None:
        """Wait for the child's start-up message (it has imported the target by then)."""
        if self.ready:
            return
        try:
            with _Watchdog(timeout_s, self.kill) as watchdog:
                fatal = read_startup(self.reader)
        except (EOFError, OSError):
            self.kill()
            what = "did not start in time" if watchdog.fired else "died while starting"
            log.error(
                "media decoder (pid %s) %s, exit code %s; under the 'spawn' start method the child "
                "re-imports the main module: it must not do work at import time",
                self.process.pid,
                what,
                self.process.exitcode,
            )
            raise NotReady(f"the media decoder {what}") from None
        except InvalidReply as exc:
            self.kill()
            log.error("media decoder (pid %s) sent an invalid start-up message: %s", self.process.pid, exc)
            raise VideoQAError("the media decoder could not start: it sent an invalid start-up message") from None
        if fatal is not None:
            self.kill()
            raise VideoQAError(f"the media decoder could not start: {fatal}")
        self.ready = True

    def decode(
        self, kind: MediaKind, parts: list[Any], spec: SamplingSpec, image_fps: float, timeout_s: float
    ) -> DecodedMedia:
        request = pack_request(kind, spec, image_fps, len(parts))
        limits = ReplyLimits.for_spec(spec)
        self.tasks += 1
        try:
            with _Watchdog(timeout_s, self.kill) as watchdog:
                self.conn.send_bytes(request)
                for part in parts:
                    self.conn.send_bytes(part)
                result = read_result(self.reader, limits)
                if self.reader.pending():
                    raise InvalidReply("bytes after the reply")
        except (EOFError, OSError):
            code = self.process.exitcode
            self.kill()
            if watchdog.fired:
                log.warning("media decoder (pid %s) killed after %.3g s", self.process.pid, timeout_s)
                raise MediaDecodeError(f"decoding took longer than {timeout_s:g} s", field="media") from None
            log.warning("media decoder (pid %s) died, exit code %s", self.process.pid, code)
            raise MediaDecodeError("the decoder crashed on this input", field="media") from None
        except InvalidReply as exc:
            self.kill()
            log.warning("media decoder (pid %s) sent an invalid reply (%s); killed", self.process.pid, exc)
            raise MediaDecodeError(INVALID_RESULT, field="media") from None
        except Exception as exc:  # a bug on this side; the pipe is out of step, the child unusable
            self.kill()
            log.exception("could not read the reply of media decoder (pid %s)", self.process.pid)
            raise MediaDecodeError(INVALID_RESULT, field="media") from exc
        if isinstance(result, VideoQAError):
            raise result
        return result

    def stop(self) -> None:
        """Ask an idle child to exit (it is reaped later); kill it if the pipe is already broken."""
        if not self.dead:
            try:
                self.conn.send_bytes(b"")
            except OSError:
                self.kill()
        self.dead = True
        self.conn.close()

    def kill(self) -> None:
        """SIGKILL the child and reap it (safe to call from the watchdog and the caller at once)."""
        with self._kill_lock:
            self.dead = True
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5)


class _Watchdog:
    """Calls ``on_fire`` after ``timeout_s`` unless the ``with`` block ended first."""

    def __init__(self, timeout_s: float, on_fire: Callable[[], None]) -> None:
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True
        self._on_fire = on_fire
        self._lock = threading.Lock()
        self._done = False
        self.fired = False

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
        self._on_fire()


def _media_kind(kind: MediaKind | str) -> MediaKind:
    try:
        return MediaKind(kind)
    except ValueError:
        raise errors.InvalidInput(f"unknown media kind {kind!r}", field="media") from None


def _payload_parts(kind: MediaKind, payload: Payload) -> list[Any]:
    """The byte strings to send: [file] for a video, one per image for an image sequence."""
    if kind is MediaKind.VIDEO:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise errors.InvalidInput("a video must be given as bytes", field="media")
        return [payload]
    if isinstance(payload, bytes | bytearray | memoryview | str):
        raise errors.InvalidInput("images must be given as a list of encoded images", field="media")
    parts = list(payload)
    if not all(isinstance(p, bytes | bytearray | memoryview) for p in parts):
        raise errors.InvalidInput("each image must be given as bytes", field="media")
    return parts


# -- wire protocol -----------------------------------------------------------------------------------

#: What the caller is told when the child's reply breaks the protocol.
INVALID_RESULT = "the decoder returned an invalid result"

_REQUEST_MAGIC = b"VQR1"
#: magic, media kind code, which of num_frames (bit 0) / fps (bit 1) are set, num_frames, fps, max_frames,
#: max_resolution, default_frames, image_fps, number of payload messages that follow.
_REQUEST = struct.Struct("<4sBBqdqqqdI")
_MEDIA_KINDS = {1: MediaKind.VIDEO, 2: MediaKind.IMAGES}
_MEDIA_KIND_CODES = {kind: code for code, kind in _MEDIA_KINDS.items()}

_MAGIC = b"VQD1"
_PREFIX = struct.Struct("<4sB")
_READY, _FATAL, _FRAMES, _ERROR = 1, 2, 3, 4
_FATAL_HEADER = struct.Struct("<I")
_FRAMES_HEADER = struct.Struct("<BBIIIIIIddQ")
_ERROR_HEADER = struct.Struct("<BBBdI")
_UINT8 = 1
_CHANNELS = 3
#: Bytes per frame of the index (u32) and timestamp (f64) arrays.
_PER_FRAME_META = 4 + 8
_MAX_MESSAGE_BYTES = 1024
_MAX_RETRY_AFTER_S = 3600.0
#: The only errors a child may report (anything else it raises is sent as a MediaDecodeError).
_ERROR_KINDS: dict[int, type[VideoQAError]] = {1: MediaDecodeError, 2: InvalidInput, 3: LimitExceeded}
#: The only request fields a child's error may name (0: none).
_FIELDS: dict[int, str | None] = {0: None, 1: "media", 2: "sampling", 3: "sampling.num_frames", 4: "sampling.fps"}
_FIELD_CODES = {name: code for code, name in _FIELDS.items()}


class InvalidReply(Exception):
    """The child sent bytes that do not follow the protocol, or values outside the request's limits."""


@dataclass(frozen=True)
class ReplyLimits:
    """What a ``FRAMES`` reply may hold: at most ``max_frames`` frames of at most ``max_side`` px a side."""

    max_frames: int
    max_side: int

    @classmethod
    def for_spec(cls, spec: SamplingSpec) -> ReplyLimits:
        return cls(max_frames=spec.max_frames, max_side=spec.max_resolution)

    @property
    def max_frame_bytes(self) -> int:
        return max(0, self.max_frames) * max(0, self.max_side) ** 2 * _CHANNELS


class ReplyReader:
    """Exact reads of a child's replies from the raw socket under ``conn`` (never ``Connection.recv``,
    which unpickles). A read waits in steps of ``_POLL_S`` and raises ``EOFError`` as soon as the
    child is gone (``alive()`` false and nothing left to read), even if the pipe stays open."""

    def __init__(self, conn: Connection, alive: Callable[[], bool]) -> None:
        self.conn = conn
        self.alive = alive

    def read(self, size: int) -> bytes:
        buffer = bytearray(size)
        self.read_into(memoryview(buffer))
        return bytes(buffer)

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` (bytes) exactly."""
        done = 0
        while done < len(view):
            self._wait()
            got = os.readv(self.conn.fileno(), [view[done:]])
            if got == 0:
                raise EOFError("the decoder closed its end of the pipe")
            done += got

    def pending(self) -> bool:
        """Whether the child has sent more than was read (it may not). Consumes a byte if so; the end of
        the pipe (the child exited after its reply) is not more."""
        return self.conn.poll(0) and os.read(self.conn.fileno(), 1) != b""

    def _wait(self) -> None:
        while not self.conn.poll(_POLL_S):
            if not self.alive():
                if self.conn.poll(0):
                    return
                raise EOFError("child exited")


def pack_request(kind: MediaKind, spec: SamplingSpec, image_fps: float, parts: int) -> bytes:
    """The request header for one decode (the payload messages follow it)."""
    flags = (spec.num_frames is not None) | (spec.fps is not None) << 1
    try:
        return _REQUEST.pack(
            _REQUEST_MAGIC,
            _MEDIA_KIND_CODES[kind],
            flags,
            0 if spec.num_frames is None else spec.num_frames,
            0.0 if spec.fps is None else spec.fps,
            spec.max_frames,
            spec.max_resolution,
            spec.default_frames,
            image_fps,
            parts,
        )
    except struct.error:
        raise InvalidInput(f"sampling parameters out of range: {spec}", field="sampling") from None


def unpack_request(data: bytes) -> tuple[MediaKind, SamplingSpec, float, int]:
    """(kind, spec, image_fps, number of payload messages) of a request header (child side)."""
    fields = _REQUEST.unpack(data)
    magic, kind, flags, num_frames, fps, max_frames, max_resolution, default_frames, image_fps, parts = fields
    if magic != _REQUEST_MAGIC or kind not in _MEDIA_KINDS:
        raise ValueError("not a decode request")
    spec = SamplingSpec(
        num_frames=num_frames if flags & 1 else None,
        fps=fps if flags & 2 else None,
        max_frames=max_frames,
        max_resolution=max_resolution,
        default_frames=default_frames,
    )
    return _MEDIA_KINDS[kind], spec, image_fps, parts


def encode_ready() -> bytes:
    return _PREFIX.pack(_MAGIC, _READY)


def encode_fatal(message: str) -> bytes:
    text = _message_bytes(message)
    return _PREFIX.pack(_MAGIC, _FATAL) + _FATAL_HEADER.pack(len(text)) + text


def encode_error(exc: VideoQAError) -> bytes:
    """An ``ERROR`` reply: the most derived allowed kind of ``exc`` (else MediaDecodeError), its field
    if allowed (else none), its retry hint if usable, its message made printable and cut to size."""
    kind = next((c for cls in type(exc).__mro__ for c, k in _ERROR_KINDS.items() if k is cls), 1)
    field = _FIELD_CODES.get(exc.field, 0) if isinstance(exc.field, str) else 0
    retry = exc.retry_after_s
    usable = isinstance(retry, int | float) and math.isfinite(retry) and 0 <= retry <= _MAX_RETRY_AFTER_S
    text = _message_bytes(str(exc.message))
    header = _ERROR_HEADER.pack(kind, field, usable, float(retry) if usable else 0.0, len(text))
    return _PREFIX.pack(_MAGIC, _ERROR) + header + text


def encode_frames(result: object) -> list[bytes | memoryview]:
    """A ``FRAMES`` reply for ``result`` as buffers to write in order (the frames are not copied).

    Raises ``MediaDecodeError`` when ``result`` is not a ``DecodedMedia`` this protocol can carry.
    """
    if not isinstance(result, DecodedMedia):
        raise MediaDecodeError(f"the decoder returned {type(result).__name__}", field="media")
    frames = np.ascontiguousarray(result.frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != _CHANNELS:
        raise MediaDecodeError(f"the decoder returned frames of shape {frames.shape} ({frames.dtype})", field="media")
    count, height, width, _ = frames.shape
    try:
        indices = [int(i) for i in result.indices]
        if not all(0 <= i < 1 << 32 for i in indices):
            raise ValueError("index out of range")
        header = _FRAMES_HEADER.pack(
            _UINT8,
            _CHANNELS,
            count,
            height,
            width,
            len(indices),
            len(result.timestamps),
            result.source_frames,
            result.source_fps,
            result.duration_s,
            frames.nbytes,
        )
        meta = np.asarray(indices, dtype="<u4").tobytes() + np.asarray(result.timestamps, dtype="<f8").tobytes()
    except (struct.error, ValueError, TypeError, OverflowError) as exc:
        raise MediaDecodeError(f"the decoder returned metadata out of range ({exc})", field="media") from None
    return [_PREFIX.pack(_MAGIC, _FRAMES) + header + meta, memoryview(frames.reshape(-1))]


def read_startup(reader: ReplyReader) -> str | None:
    """None once the child is ready, or the reason it could not start."""
    kind = _read_prefix(reader)
    if kind == _READY:
        return None
    if kind == _FATAL:
        (length,) = _FATAL_HEADER.unpack(reader.read(_FATAL_HEADER.size))
        return _read_message(reader, length)
    raise InvalidReply(f"reply kind {kind} at start-up")


def read_result(reader: ReplyReader, limits: ReplyLimits) -> DecodedMedia | VideoQAError:
    """The frames, or the error the child reported (returned, not raised), of one decode.

    Raises ``InvalidReply`` when the reply breaks the protocol or the limits (before reading more
    than they allow), ``EOFError`` / ``OSError`` when the child dies or the pipe breaks.
    """
    kind = _read_prefix(reader)
    if kind == _FRAMES:
        return _read_frames(reader, limits)
    if kind == _ERROR:
        return _read_error(reader)
    raise InvalidReply(f"reply kind {kind} after a request")


def _read_prefix(reader: ReplyReader) -> int:
    magic, kind = _PREFIX.unpack(reader.read(_PREFIX.size))
    if magic != _MAGIC:
        raise InvalidReply(f"bad magic {magic!r}")
    return kind


def _read_frames(reader: ReplyReader, limits: ReplyLimits) -> DecodedMedia:
    fields = _FRAMES_HEADER.unpack(reader.read(_FRAMES_HEADER.size))
    dtype, channels, count, height, width, n_indices, n_timestamps, source_frames, fps, duration, size = fields
    _require(dtype == _UINT8, f"dtype code {dtype}")
    _require(channels == _CHANNELS, f"{channels} channels")
    _require(1 <= count <= limits.max_frames, f"{count} frames (limit {limits.max_frames})")
    _require(1 <= height <= limits.max_side and 1 <= width <= limits.max_side, f"frames {width}x{height}")
    _require(n_indices == count and n_timestamps == count, f"{n_indices} indices, {n_timestamps} timestamps")
    _require(size == count * height * width * channels <= limits.max_frame_bytes, f"{size} frame bytes")
    _require(source_frames >= count, f"{source_frames} source frames")
    _require(math.isfinite(fps) and fps > 0, f"source fps {fps}")
    _require(math.isfinite(duration) and duration >= 0, f"duration {duration}")
    meta = reader.read(count * _PER_FRAME_META)
    indices = np.frombuffer(meta, dtype="<u4", count=count).astype(np.int64)
    timestamps = np.frombuffer(meta, dtype="<f8", count=count, offset=4 * count)
    _require(bool(np.all(np.diff(indices) > 0)) and indices[-1] < source_frames, "indices out of order or range")
    _require(bool(np.all(np.isfinite(timestamps))), "timestamps not finite")
    frames = np.empty((count, height, width, channels), dtype=np.uint8)
    reader.read_into(memoryview(frames.reshape(-1)))
    return DecodedMedia(
        frames=frames,
        indices=[int(i) for i in indices],
        timestamps=[float(t) for t in timestamps],
        source_frames=source_frames,
        source_fps=fps,
        duration_s=duration,
    )


def _read_error(reader: ReplyReader) -> VideoQAError:
    kind, field, has_retry, retry, length = _ERROR_HEADER.unpack(reader.read(_ERROR_HEADER.size))
    _require(kind in _ERROR_KINDS, f"error kind {kind}")
    _require(field in _FIELDS, f"field code {field}")
    _require(has_retry in (0, 1), f"retry flag {has_retry}")
    if has_retry:
        _require(math.isfinite(retry) and 0 <= retry <= _MAX_RETRY_AFTER_S, f"retry after {retry}")
    else:
        _require(retry == 0.0, "retry hint without its flag")
    message = _read_message(reader, length)
    return _ERROR_KINDS[kind](message, field=_FIELDS[field], retry_after_s=retry if has_retry else None)


def _read_message(reader: ReplyReader, length: int) -> str:
    _require(length <= _MAX_MESSAGE_BYTES, f"message of {length} bytes")
    try:
        text = reader.read(length).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidReply("message not UTF-8") from None
    _require(text.isprintable(), "message not printable")
    return text


def _message_bytes(message: str) -> bytes:
    """``message`` made printable, as UTF-8 of at most ``_MAX_MESSAGE_BYTES`` (cut at a character)."""
    text = "".join(c if c.isprintable() else "?" for c in message)
    return text.encode("utf-8")[:_MAX_MESSAGE_BYTES].decode("utf-8", "ignore").encode("utf-8")


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise InvalidReply(what)


# -- child process -----------------------------------------------------------------------------------


def _child_main(conn: Connection, target: str) -> None:
    """Entry point of a decoder process: load ``target``, then serve decode requests until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    out = conn.fileno()
    try:
        module_name, _, function_name = target.partition(":")
        function = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:
        _write_all(out, encode_fatal(f"cannot load {target!r}: {exc!r}"))
        return
    _write_all(out, encode_ready())
    while True:
        try:
            request = conn.recv_bytes()
        except EOFError:
            return
        if not request:
            return
        kind, spec, image_fps, count = unpack_request(request)
        parts = [conn.recv_bytes() for _ in range(count)]
        payload = parts[0] if kind is MediaKind.VIDEO else parts
        del parts
        _serve_one(out, function, kind.value, payload, spec, image_fps)
        del payload


def _serve_one(out: int, function: Callable[..., Any], *args: Any) -> None:
    try:
        reply = encode_frames(function(*args))
    except VideoQAError as exc:
        reply = [encode_error(exc)]
    except Exception as exc:
        traceback.print_exc()
        message = f"could not decode the media (internal decoder error: {type(exc).__name__})"
        reply = [encode_error(MediaDecodeError(message, field="media"))]
    for buffer in reply:
        _write_all(out, buffer)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]
