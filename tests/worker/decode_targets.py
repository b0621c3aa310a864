"""Decoder targets for ``MediaDecoder`` tests, imported by the spawned child as
``tests.worker.decode_targets:<name>`` (the child gets the parent's ``sys.path``)."""

from __future__ import annotations

import os
import time
from typing import Any

from videoqa.worker.errors import LimitExceeded
from videoqa.worker.video.decode_child import decode_media


def abort(*args: Any) -> None:
    """Dies like decord does on some files ("terminate called after throwing ...")."""
    os.abort()


def hang(*args: Any) -> None:
    """Never returns, like a decoder stuck on a malformed stream."""
    while True:
        time.sleep(3600)


def limit(*args: Any) -> None:
    """Raises a non-decode ``VideoQAError`` with a field."""
    raise LimitExceeded("too many pixels", field="media", retry_after_s=1.5)


def bug(*args: Any) -> None:
    """Raises an exception that is not a ``VideoQAError``."""
    raise ZeroDivisionError("division by zero")


def abort_on_empty(kind: str, payload: Any, *args: Any) -> Any:
    """Aborts on an empty video, decodes normally otherwise (one child serves both)."""
    if kind == "video" and not payload:
        os.abort()
    return decode_media(kind, payload, *args)


def hang_on_empty(kind: str, payload: Any, *args: Any) -> Any:
    """Hangs on an empty video, decodes normally otherwise."""
    if kind == "video" and not payload:
        hang()
    return decode_media(kind, payload, *args)


def not_media(*args: Any) -> int:
    """Returns something that is not a ``DecodedMedia``."""
    return os.getpid()


# -- a compromised decoder: it writes whatever it likes to its pipe --------------------------------------


def _pipe_fd() -> int:
    """The child's end of its pipe to the parent (what an exploit in the decoder would write to)."""
    import gc
    from multiprocessing.connection import Connection

    fds = {o.fileno() for o in gc.get_objects() if isinstance(o, Connection) and not o.closed}
    assert len(fds) == 1, fds
    return fds.pop()


def _write_then(data: bytes, then: str = "hang") -> None:
    fd = _pipe_fd()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if then == "exit":
        os._exit(0)
    hang()


class _TouchOnUnpickle:
    """Pickles to ``open(path, "w")``: unpickling it creates ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def pickle_reply(kind: str, payload: Any, *args: Any) -> None:
    """Sends pickles that create the file named by ``payload`` when unpickled: the old reply format
    (``("ok", header, sizes)`` read with ``Connection.recv``) whose header unpickles to the same."""
    import pickle
    from multiprocessing.connection import Connection

    path = bytes(payload).decode()
    evil = _TouchOnUnpickle(path)
    conn = Connection(os.dup(_pipe_fd()))
    conn.send(("ok", pickle.dumps(evil, protocol=5), []))
    conn.send(evil)
    hang()


def garbage_reply(*args: Any) -> None:
    """Writes random bytes."""
    _write_then(os.urandom(4096))


def reply_bytes(kind: str, payload: Any, *args: Any) -> None:
    """Writes ``payload`` (forged reply bytes chosen by the test) as the reply, then hangs."""
    _write_then(bytes(payload))


def reply_bytes_and_exit(kind: str, payload: Any, *args: Any) -> None:
    """Writes ``payload`` as the reply, then exits (a reply cut short)."""
    _write_then(bytes(payload), then="exit")


def two_replies(kind: str, payload: Any, *args: Any) -> None:
    """Decodes normally, then sends the reply twice (the second would answer the next request)."""
    from videoqa.worker.video.decode import encode_frames

    reply = b"".join(bytes(b) for b in encode_frames(decode_media(kind, payload, *args)))
    _write_then(reply + reply)
