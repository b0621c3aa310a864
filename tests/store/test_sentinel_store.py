"""The Redis store through a real Redis Sentinel (``redis+sentinel://``): the master it names."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid

import pytest

from tests import preflight
from videoqa.worker.kvcache.manifest import Owner
from videoqa.worker.kvcache.store import RedisStore


@pytest.fixture()
def sentinel(redis_server, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor videoqa 127.0.0.1 {redis_server.port} 1\n"
        "sentinel down-after-milliseconds videoqa 5000\n"
    )
    process = subprocess.Popen(
        [preflight.require("redis-server"), str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "videoqa"):
                    break
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("redis sentinel did not start")
            time.sleep(0.05)
        yield f"redis+sentinel://127.0.0.1:{port}/videoqa/0"
    finally:
        process.kill()
        process.wait(10)


def test_sessions_through_the_master_sentinel_names(sentinel, redis_server):
    store = RedisStore(sentinel, ttl_s=30, max_session_bytes=1 << 20, chunk_bytes=1000)
    s = uuid.uuid4().hex
    store.create(s, Owner("a", "m", "r", 0.0), b"p" * 2500)
    store.append(s, 0, b"turn", key="k")
    assert store.load(s).turns == [b"turn"]
    assert redis_server.client().exists(f"{RedisStore.base(s)}:manifest"), "the master is the server monitored"
    assert store.delete(s)
    with pytest.raises(ValueError):
        RedisStore("redis+sentinel://127.0.0.1:1", ttl_s=30, max_session_bytes=1000)
