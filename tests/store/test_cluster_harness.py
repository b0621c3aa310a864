"""The local Redis Cluster harness (tests/redis_cluster.py): start-up, routing, failover, clean-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.redis_cluster import LocalRedisCluster, reap_leftovers

ROOT = Path(__file__).resolve().parents[2]


def keys_on_every_master(cluster: LocalRedisCluster) -> dict[str, str]:
    """One key per master: master address → key."""
    found: dict[str, str] = {}
    for i in range(1000):
        key = f"harness:{i}"
        found.setdefault(cluster.master_for_key(key), key)
        if len(found) == len(cluster.masters()):
            return found
    raise AssertionError("could not find keys for every master")


def test_started_healthy_and_fast(redis_cluster):
    assert len(redis_cluster.addresses) == 6 and len(redis_cluster.masters()) == 3
    assert len(redis_cluster.replicas()) == 3
    assert redis_cluster.url == f"redis+cluster://{redis_cluster.live_addresses()[0]}"
    covered = sum(last - first + 1 for first, last, _, _ in redis_cluster.slots())
    assert covered == 16384
    for address in redis_cluster.addresses:
        assert redis_cluster.info(address)["cluster_state"] == "ok"
    # Target under 5 s (measured about 2 s on the 2-core CI box); the bound leaves room for load.
    assert redis_cluster.startup_s < 10, f"the cluster took {redis_cluster.startup_s:.1f} s to start"


def test_set_get_across_slots(redis_cluster):
    client = redis_cluster.client()
    try:
        by_master = keys_on_every_master(redis_cluster)
        slots = {redis_cluster.keyslot(key) for key in by_master.values()}
        assert len(slots) == 3
        for master, key in by_master.items():
            value = os.urandom(1000)
            assert client.set(key, value)
            assert client.get(key) == value
            assert redis_cluster.node_client(master).get(key) == value  # it lives on that master
        assert client.delete(*by_master.values()) == 3
    finally:
        client.close()


def test_failover_keeps_replicated_writes_and_restart_rejoins(tmp_path):
    with LocalRedisCluster(tmp_path) as cluster:
        key, value = "harness:failover", os.urandom(4096)
        dead = cluster.master_for_key(key)
        replicas = [r for first, last, m, rs in cluster.slots() if m == dead for r in rs]
        pipe = cluster.node_client(dead).pipeline(transaction=False)
        pipe.set(key, value)
        pipe.execute_command("WAIT", 1, 5000)  # same connection: acknowledged by the replica
        assert pipe.execute()[1] >= 1

        cluster.kill(dead)
        new_master = cluster.wait_for_failover(dead, timeout=20)
        assert new_master in replicas and dead not in cluster.masters()
        assert cluster.master_for_key(key) == new_master
        assert cluster.node_client(new_master).get(key) == value
        client = cluster.client()
        try:
            assert client.get(key) == value
            client.set(key, b"after")
        finally:
            client.close()

        cluster.restart(dead)  # same config file: back as a replica of the promoted node
        assert dead in cluster.replicas() and len(cluster.masters()) == 3
        role = cluster.info(dead, "replication")
        assert role["role"] == "slave" and int(role["master_port"]) == int(new_master.rsplit(":", 1)[1])
        workdir = cluster.workdir
    assert not workdir.exists()


_ORPHAN = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.redis_cluster import LocalRedisCluster
cluster = LocalRedisCluster(sys.argv[2]).start()
print(cluster._watchdog.pid, *(p.pid for p in cluster.processes.values()), flush=True)
time.sleep(600)
"""


def _orphan(tmp_path: Path) -> tuple[subprocess.Popen, int, list[int]]:
    owner = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN, str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    watchdog, *nodes = (int(x) for x in owner.stdout.readline().split())
    assert len(nodes) == 6
    return owner, watchdog, nodes


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and b"redis-server" in _cmdline(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_nodes_die_with_their_owner(tmp_path):
    """SIGKILL the owning process: its watchdog kills the nodes. SIGKILL the watchdog too: the next
    start (here: reap_leftovers) kills them."""
    owner, _, nodes = _orphan(tmp_path / "a")
    owner.kill()
    owner.wait(10)
    assert _gone(nodes, 10), "the watchdog did not kill the nodes"
    deadline = time.monotonic() + 10  # it removes the folder once they are gone
    while list((tmp_path / "a").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list((tmp_path / "a").iterdir()), "the watchdog did not remove the cluster folder"

    owner, watchdog, nodes = _orphan(tmp_path / "b")
    os.kill(watchdog, signal.SIGKILL)
    owner.kill()
    owner.wait(10)
    time.sleep(0.2)
    assert all(b"redis-server" in _cmdline(pid) for pid in nodes)  # orphans now
    reap_leftovers()  # (a cluster starting elsewhere on the machine meanwhile would reap them as well)
    assert _gone(nodes, 10)
    assert not list((tmp_path / "b").iterdir())
