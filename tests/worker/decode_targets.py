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
