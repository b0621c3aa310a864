"""What checking a session before building on it costs: the chunk check (one script: EXISTS and
STRLEN of every chunk) and the manifest read, against a full load, for sessions of 10 to 500 MB.

    python bench/session_checks.py [--url redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    from videoqa.worker.kvcache.manifest import Owner
    from videoqa.worker.kvcache.store import RedisStore

    store = RedisStore(args.url, ttl_s=300, max_session_bytes=4 << 30)
    for size_mb, turns in ((10, 4), (200, 20), (500, 40)):
        s = uuid.uuid4().hex
        store.create(s, Owner("t", "m", "r", 0.0), os.urandom(size_mb << 20))
        for i in range(turns):
            store.append(s, i, os.urandom(256 << 10), key=f"k{i}", outcome="{}")
        manifest = store.manifest(s)
        verify = _median_s(store.verify, 30, manifest)
        read = _median_s(store.manifest, 30, s)
        load = _median_s(store.load, 1, s)
        chunks = sum(r.chunks for r in manifest.records)
        print(
            f"{size_mb} MB prefix + {turns} turns ({len(manifest.records)} records, {chunks} chunks): "
            f"chunk check {1e3 * verify:.2f} ms, manifest read {1e3 * read:.2f} ms, full load {1e3 * load:.0f} ms "
            f"(check / load = {verify / load:.5f})"
        )
        store.delete(s)


def _median_s(fn, repeats: int, *args) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()
