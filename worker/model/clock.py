"""Seconds of model work, counted on the thread that does it.

The worker's compute thread should do model work only (forwards, compression, batched decode
steps); everything else it does is overhead that stalls every running answer. Model code marks
its work with :func:`model_work`; the scheduler compares the count with the time it was busy.
Spans nest (a probe's forward inside a compression counts once) and each thread counts its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

_local = threading.local()


def model_seconds() -> float:
    """Model work this thread has done so far, in seconds."""
    return getattr(_local, "seconds", 0.0)


@contextlib.contextmanager
def model_work() -> Iterator[None]:
    """Count the block as model work (once, however deeply spans nest)."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    started = time.perf_counter() if depth == 0 else 0.0
    try:
        yield
    finally:
        _local.depth = depth
        if depth == 0:
            _local.seconds = model_seconds() + time.perf_counter() - started
