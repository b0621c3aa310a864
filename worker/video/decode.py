"""Media decoding isolated in child processes.

decord can abort, segfault or hang on some real-world files (dmlc/decord#25, #99, #229), so the
serving process never calls it: ``MediaDecoder`` hands each upload to a warm child process started
with the "spawn" context, waits for the frames with a deadline, and replaces the child when it
dies or overruns. The payload goes to the child over a ``multiprocessing`` pipe as raw bytes, and
the frames come back as pickle protocol 5 out-of-band buffers (one copy, no pickling of pixels).

This module imports neither decord nor numpy; the child imports the decoder ``target``.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import pickle
import signal
import threading
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from videoqa.worker import errors
from videoqa.worker.errors import MediaDecodeError, NotReady, VideoQAError
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
                message = self._recv()
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
        if message[0] != "ready":
            self.kill()
            raise VideoQAError(f"the media decoder could not start: {message[1]}")
        self.ready = True

    def decode(
        self, kind: MediaKind, parts: list[Any], spec: SamplingSpec, image_fps: float, timeout_s: float
    ) -> DecodedMedia:
        self.tasks += 1
        try:
            with _Watchdog(timeout_s, self.kill) as watchdog:
                self.conn.send(("decode", kind.value, spec, image_fps, len(parts)))
                for part in parts:
                    self.conn.send_bytes(part)
                reply = self._recv()
                result = _read_result(self.conn, reply) if reply[0] == "ok" else None
        except (EOFError, OSError):
            code = self.process.exitcode
            self.kill()
            if watchdog.fired:
                log.warning("media decoder (pid %s) killed after %.3g s", self.process.pid, timeout_s)
                raise MediaDecodeError(f"decoding took longer than {timeout_s:g} s", field="media") from None
            log.warning("media decoder (pid %s) died, exit code %s", self.process.pid, code)
            raise MediaDecodeError("the decoder crashed on this input", field="media") from None
        except Exception as exc:  # an unreadable reply: the pipe is out of step, the child unusable
            self.kill()
            log.exception("media decoder (pid %s) sent an unreadable reply", self.process.pid)
            raise MediaDecodeError("could not read the decoder's result", field="media") from exc
        if reply[0] == "error":
            raise _rebuild_error(*reply[1:])
        if not isinstance(result, DecodedMedia):
            raise MediaDecodeError(f"the decoder returned {type(result).__name__}", field="media")
        return result

    def _recv(self) -> Any:
        """Next message; raises EOFError as soon as the child is gone (even if the pipe stays open)."""
        while not self.conn.poll(_POLL_S):
            if not self.process.is_alive():
                if self.conn.poll(0):
                    break
                raise EOFError("child exited")
        return self.conn.recv()

    def stop(self) -> None:
        """Ask an idle child to exit (it is reaped later); kill it if the pipe is already broken."""
        if not self.dead:
            try:
                self.conn.send(None)
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


def _read_result(conn: Connection, reply: tuple[str, bytes, list[int]]) -> Any:
    """Unpickle a result whose large buffers (the frames) follow the header as separate messages."""
    _, header, sizes = reply
    buffers = []
    for size in sizes:
        buffer = bytearray(size)
        if size:
            conn.recv_bytes_into(buffer)
        buffers.append(buffer)
    return pickle.loads(header, buffers=buffers)


def _rebuild_error(name: str, message: str, field: str | None, retry_after_s: float | None) -> VideoQAError:
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, VideoQAError)):
        cls = MediaDecodeError
    return cls(message, field=field, retry_after_s=retry_after_s)


# -- child process -----------------------------------------------------------------------------------


def _child_main(conn: Connection, target: str) -> None:
    """Entry point of a decoder process: load ``target``, then serve decode requests until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        module_name, _, function_name = target.partition(":")
        function = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:
        conn.send(("fatal", f"cannot load {target!r}: {exc!r}"))
        return
    conn.send(("ready",))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        _, kind, spec, image_fps, count = request
        parts = [conn.recv_bytes() for _ in range(count)]
        payload = parts[0] if kind == MediaKind.VIDEO.value else parts
        del parts
        _serve_one(conn, function, kind, payload, spec, image_fps)
        del payload


def _serve_one(conn: Connection, function: Callable[..., Any], *args: Any) -> None:
    try:
        result = function(*args)
        buffers: list[pickle.PickleBuffer] = []
        header = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
    except VideoQAError as exc:
        conn.send(("error", _error_name(exc), exc.message, exc.field, exc.retry_after_s))
        return
    except Exception as exc:
        traceback.print_exc()
        message = f"could not decode the media (internal decoder error: {type(exc).__name__})"
        conn.send(("error", "MediaDecodeError", message, "media", None))
        return
    raws = [b.raw() for b in buffers]
    conn.send(("ok", header, [r.nbytes for r in raws]))
    for raw in raws:
        if raw.nbytes:
            conn.send_bytes(raw)


def _error_name(exc: VideoQAError) -> str:
    """The most derived class of ``videoqa.worker.errors`` that ``exc`` is an instance of."""
    for cls in type(exc).__mro__:
        if getattr(errors, cls.__name__, None) is cls:
            return cls.__name__
    return "MediaDecodeError"
