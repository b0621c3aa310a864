"""A private Redis Cluster on loopback ports, for tests and benchmarks.

    with LocalRedisCluster() as cluster:          # 3 masters, 1 replica each, on free ports
        client = cluster.client()                 # a redis.cluster.RedisCluster
        store = RedisStore(cluster.url, ...)      # "redis+cluster://127.0.0.1:P"
        cluster.kill(cluster.master_for_key("k"))
        new_master = cluster.wait_for_failover(dead)

The nodes are ``redis-server --cluster-enabled yes`` processes owned by the object, joined with
``redis-cli --cluster create``. They are ended by ``stop()`` (also on interpreter exit), and, if
the owning process dies without that (SIGKILL, a crash), by a small watchdog process that sees the
owner's end of a pipe close; a cluster left behind anyway (the watchdog killed too) is reaped by the
next ``start()`` on the machine. Linux only: before it kills a pid, the watchdog checks that the
process runs in the cluster's folder (``/proc/<pid>/cwd``; each node runs in ``--dir <folder>/<port>``),
so a reused pid is never hit.

Nothing here imports the project: ``bench/`` scripts import it as ``tests.redis_cluster`` after
putting the repository root on ``sys.path``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SLOTS = 16384
BUS_OFFSET = 10000  # Redis Cluster's bus port is the client port + 10000
# Client ports whose bus port stays below the usual ephemeral range (32768–60999), so neither is
# likely to be taken by an outgoing connection between the check and the bind.
PORT_RANGE = (12000, 22000)
REGISTRY = Path(tempfile.gettempdir()) / "videoqa-redis-cluster-owners"

# The watchdog: reads node pids (one a line) until its stdin closes (the owner ended, one way or
# another), then SIGKILLs those still running from the cluster's directory, and removes it.
_WATCHDOG = r"""
import os, shutil, signal, sys, time
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
workdir, entry = sys.argv[1], sys.argv[2]
pids = {int(line) for line in sys.stdin if line.strip().isdigit()}

def mine(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd").startswith(workdir + "/")  # unreadable once it is dead
    except OSError:
        return False

for pid in pids:
    if mine(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
deadline = time.monotonic() + 10
while any(mine(pid) for pid in pids) and time.monotonic() < deadline:
    time.sleep(0.02)
shutil.rmtree(workdir, ignore_errors=True)
try:
    os.unlink(entry)
except OSError:
    pass
"""


class ClusterError(RuntimeError):
    pass


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(
            f"{name} is not installed (Debian/Ubuntu: apt-get install redis-server, which brings "
            "redis-server, redis-cli and redis-benchmark; .ci/run installs it)"
        )
    return path


def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(count: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A port P such that P..P+count-1 and their bus ports (+10000) are all free now."""
    low, high = PORT_RANGE
    for _ in range(attempts):
        base = random.randrange(low, high - count)
        ports = [base + i for i in range(count)]
        if all(_bindable(p, host) and _bindable(p + BUS_OFFSET, host) for p in ports):
            return base
    raise ClusterError(f"no block of {count} free ports (and bus ports) found in {PORT_RANGE}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs_in(pid: int, workdir: str) -> bool:
    """Whether ``pid`` is a live process running in ``workdir`` (a node runs in ``workdir/<port>``)."""
    try:
        return bool(workdir) and os.readlink(f"/proc/{pid}/cwd").startswith(workdir + "/")
    except OSError:  # gone, or a zombie
        return False


def reap_leftovers() -> int:
    """Kill the nodes of clusters whose owning process is gone (and whose watchdog did not do it).

    Returns how many processes were killed."""
    killed = 0
    if not REGISTRY.is_dir():
        return 0
    for entry in REGISTRY.glob("*.json"):
        try:
            record = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        if _alive(record.get("owner", 0)):
            continue
        workdir, pids = record.get("workdir", ""), record.get("pids", [])
        for pid in pids:
            if _runs_in(pid, workdir):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        deadline = time.monotonic() + 10
        while any(_runs_in(pid, workdir) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            entry.unlink()
    return killed


class LocalRedisCluster:
    """``masters`` masters with ``replicas_per_master`` replicas each, on loopback.

    ``workdir``: a folder to create the cluster's own folder in (default: the system temp dir);
    ``stop()`` removes that cluster folder, never ``workdir`` itself. ``base_port``: use
    ``base_port .. base_port + n - 1`` instead of finding a free block.
    """

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        *,
        masters: int = 3,
        replicas_per_master: int = 1,
        base_port: int | None = None,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 1000,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if masters < 3:
            raise ValueError("Redis Cluster needs at least 3 masters")
        self.masters_count, self.replicas_per_master = masters, replicas_per_master
        self.host, self.node_timeout_ms, self.extra_args = host, node_timeout_ms, tuple(extra_args)
        self.base_port = base_port
        self.parent_dir = Path(workdir) if workdir is not None else None
        self.workdir: Path | None = None
        self.ports: list[int] = []
        self.processes: dict[str, subprocess.Popen] = {}
        self.killed: dict[str, list[tuple[int, int]]] = {}  # address → slot ranges it served when killed
        self.startup_s: float | None = None
        self._watchdog: subprocess.Popen | None = None
        self._entry: Path | None = None

    # --- addresses ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.masters_count * (1 + self.replicas_per_master)

    @property
    def addresses(self) -> list[str]:
        """Every node, ``host:port``, in start order."""
        return [f"{self.host}:{p}" for p in self.ports]

    def live_addresses(self) -> list[str]:
        return [a for a in self.addresses if a in self.processes and self.processes[a].poll() is None]

    @property
    def url(self) -> str:
        """``redis+cluster://host:port`` of a live node (the store's cluster URL form)."""
        return f"redis+cluster://{self.live_addresses()[0]}"

    @property
    def startup_nodes(self) -> list:
        """``redis.cluster.ClusterNode`` for every node (for ``RedisCluster(startup_nodes=...)``)."""
        from redis.cluster import ClusterNode

        return [ClusterNode(self.host, p) for p in self.ports]

    def client(self, **kwargs):
        """A ``redis.cluster.RedisCluster`` over the live nodes."""
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(*_split(a)) for a in self.live_addresses()]
        return RedisCluster(startup_nodes=nodes, **kwargs)

    def node_client(self, address: str, **kwargs):
        """A plain ``redis.Redis`` to one node."""
        import redis

        host, port = _split(address)
        return redis.Redis(host=host, port=port, **kwargs)

    # --- life cycle --------------------------------------------------------------------------------

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        """Start the nodes, create the cluster, wait until it is healthy. Sets ``startup_s``."""
        if self.processes:
            raise ClusterError("already started")
        started = time.monotonic()
        server, cli = _program("redis-server"), _program("redis-cli")
        reap_leftovers()
        REGISTRY.mkdir(parents=True, exist_ok=True)
        if self.parent_dir is not None:
            self.parent_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="videoqa-redis-cluster-", dir=self.parent_dir)).resolve()
        self._entry = REGISTRY / f"{self.workdir.name}.json"
        self._watchdog = subprocess.Popen(
            [sys.executable, "-I", "-c", _WATCHDOG, str(self.workdir), str(self._entry)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        atexit.register(self.stop)
        try:
            for attempt in range(5):
                base = self.base_port if self.base_port is not None else free_port_block(self.size, self.host)
                self.ports = [base + i for i in range(self.size)]
                try:
                    self._launch_all(server)
                    break
                except ClusterError:  # a port was taken meanwhile: try another block
                    self._kill_all()
                    if self.base_port is not None or attempt == 4:
                        raise
            self._create(cli, deadline=started + timeout)
            self.wait_healthy(timeout=max(1.0, started + timeout - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _args(self, port: int) -> list[str]:
        assert self.workdir is not None
        node_dir = self.workdir / str(port)
        node_dir.mkdir(exist_ok=True)
        return [
            "--port", str(port),
            "--bind", self.host,
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.workdir / f"nodes-{port}.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-replica-validity-factor", "0",  # a replica may always take over
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(node_dir),
            "--logfile", str(self.workdir / f"{port}.log"),
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",  # replicas sync at once (the default waits 5 s)
            "--client-output-buffer-limit", "replica 0 0 0",  # large values never cut a replica off
            *self.extra_args,
        ]  # fmt: skip

    def _launch(self, server: str, port: int) -> None:
        address = f"{self.host}:{port}"
        self.processes[address] = subprocess.Popen(
            [server, *self._args(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the test run reaches the owner, which stops them
        )
        self._record()

    def _record(self) -> None:
        pids = [p.pid for p in self.processes.values()]
        if self._watchdog is not None and self._watchdog.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self._watchdog.stdin.write("".join(f"{pid}\n" for pid in pids))
                self._watchdog.stdin.flush()
        if self._entry is not None:
            record = {"owner": os.getpid(), "workdir": str(self.workdir), "pids": pids}
            self._entry.write_text(json.dumps(record))

    def _launch_all(self, server: str) -> None:
        for port in self.ports:
            self._launch(server, port)
        for address in self.addresses:
            self._wait_up(address, timeout=10)

    def _wait_up(self, address: str, timeout: float) -> None:
        """Until the node answers and is our process (not another server on a port we lost)."""
        process = self.processes[address]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ClusterError(f"redis-server on {address} exited with {process.returncode}: {self._log(address)}")
            try:
                info = self.command(address, "INFO", "server", timeout=1)
            except OSError:
                time.sleep(0.01)
                continue
            if f"process_id:{process.pid}\r\n" in info:
                return
            raise ClusterError(f"another server answers on {address}")
        raise ClusterError(f"redis-server on {address} did not answer within {timeout} s")

    def _log(self, address: str) -> str:
        assert self.workdir is not None
        log = self.workdir / f"{_split(address)[1]}.log"
        return log.read_text(errors="replace")[-1000:] if log.exists() else "(no log)"

    def _create(self, cli: str, deadline: float) -> None:
        run = subprocess.run(
            [cli, "--cluster", "create", *self.addresses,
             "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
            timeout=max(1.0, deadline - time.monotonic()),
        )  # fmt: skip
        if run.returncode != 0:
            raise ClusterError(f"redis-cli --cluster create failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")

    def stop(self) -> None:
        """Kill every node, end the watchdog, remove the cluster's folder. Safe to call twice."""
        atexit.unregister(self.stop)
        self._kill_all()
        if self._watchdog is not None:
            with contextlib.suppress(OSError, ValueError):
                self._watchdog.stdin.close()
            try:
                self._watchdog.wait(5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
            self._watchdog = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._entry is not None:
            with contextlib.suppress(OSError):
                self._entry.unlink()

    def _kill_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        self.processes.clear()

    # --- queries -----------------------------------------------------------------------------------

    def command(self, address: str, *args: Any, timeout: float = 2.0) -> Any:
        """One command to one node over a fresh connection, the reply unparsed (strings decoded)."""
        import redis

        host, port = _split(address)
        conn = redis.Connection(
            host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        try:
            conn.send_command(*args)
            reply = conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise OSError(str(error)) from error
        finally:
            conn.disconnect()
        return reply

    def info(self, address: str, section: str = "cluster") -> dict[str, str]:
        text = (
            self.command(address, "CLUSTER", "INFO") if section == "cluster" else self.command(address, "INFO", section)
        )
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))

    def nodes(self, address: str | None = None) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as seen by ``address`` (default: a live node): per node its ``id``,
        ``address``, ``flags`` (a set: master, slave, myself, fail, fail?, ...), ``master_id`` (of a
        replica) and ``slots`` (``(first, last)`` ranges of a master)."""
        text = self.command(address or self.live_addresses()[0], "CLUSTER", "NODES")
        nodes = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            ranges = []
            for spec in fields[8:]:
                if spec.startswith("["):  # a slot being migrated or imported
                    continue
                first, _, last = spec.partition("-")
                ranges.append((int(first), int(last or first)))
            nodes.append(
                {
                    "id": fields[0],
                    "address": fields[1].split("@")[0],
                    "flags": set(fields[2].split(",")),
                    "master_id": None if fields[3] == "-" else fields[3],
                    "slots": ranges,
                }
            )
        return nodes

    def slots(self, address: str | None = None) -> list[tuple[int, int, str, list[str]]]:
        """The slot map as ``address`` sees it (default: a live node): ``(first, last, master,
        replicas)`` per range, replicas not flagged as failed. (From ``CLUSTER NODES``: Redis 7's
        ``CLUSTER SLOTS`` leaves out replicas that have not received a byte of replication yet.)"""
        nodes = self.nodes(address)
        ranges = []
        for node in nodes:
            if "master" not in node["flags"]:
                continue
            replicas = [
                r["address"] for r in nodes if r["master_id"] == node["id"] and not {"fail", "fail?"} & r["flags"]
            ]
            ranges += [(first, last, node["address"], replicas) for first, last in node["slots"]]
        return sorted(ranges)

    def masters(self) -> list[str]:
        """Addresses of the nodes that serve slots (as a live node sees it)."""
        return sorted({master for _, _, master, _ in self.slots()}, key=self.addresses.index)

    def replicas(self) -> list[str]:
        return [a for a in self.live_addresses() if a not in self.masters()]

    def keyslot(self, key: str | bytes) -> int:
        return int(self.command(self.live_addresses()[0], "CLUSTER", "KEYSLOT", key))

    def master_for_key(self, key: str | bytes) -> str:
        slot = self.keyslot(key)
        for first, last, master, _ in self.slots():
            if first <= slot <= last:
                return master
        raise ClusterError(f"slot {slot} is not served")

    # --- health and failures -----------------------------------------------------------------------

    def _healthy(self) -> str | None:
        """Why the cluster is not healthy yet, or None: every live node sees state ok, all slots
        assigned and ok, every live node known and every live replica's link to its master up."""
        live = self.live_addresses()
        for address in live:
            try:
                info = self.info(address)
                role = self.info(address, "replication")
            except OSError as error:
                return f"{address}: {error}"
            if info.get("cluster_state") != "ok":
                return f"{address}: cluster_state {info.get('cluster_state')}"
            if info.get("cluster_slots_ok") != str(SLOTS):
                return f"{address}: {info.get('cluster_slots_ok')} slots ok"
            if int(info.get("cluster_known_nodes", 0)) < self.size:
                return f"{address}: knows {info.get('cluster_known_nodes')} nodes"
            if role.get("role") == "slave" and role.get("master_link_status") != "up":
                return f"{address}: replica link {role.get('master_link_status')}"
        views = {address: self.slots(address) for address in live}
        if len({tuple((f, la, m) for f, la, m, _ in view) for view in views.values()}) > 1:
            return "the nodes disagree on who serves which slots"
        masters = {m for _, _, m, _ in views[live[0]]}
        if len(masters) != self.masters_count or not masters <= set(live):
            return f"masters {sorted(masters)}"
        for address in live:  # no node still flags a live node as failing
            for node in self.nodes(address):
                if node["address"] in live and {"fail", "fail?"} & node["flags"]:
                    return f"{address} flags {node['address']} {sorted(node['flags'])}"
        for address in live:  # every node's own role agrees with the slot map
            if (self.info(address, "replication").get("role") == "master") != (address in masters):
                return f"{address}: role disagrees with the slot map"
        replicas = sum(1 for a in live if a not in masters)
        if replicas < len(live) - self.masters_count:
            return f"{replicas} replicas attached"
        return None

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while (why := self._healthy()) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster is not healthy after {timeout} s: {why}")
            time.sleep(0.02)

    def kill(self, address: str) -> None:
        """SIGKILL one node (remembering which slots it served, for ``wait_for_failover``)."""
        served = [(first, last) for first, last, master, _ in self.slots() if master == address]
        process = self.processes[address]
        process.kill()
        process.wait(10)
        self.killed[address] = served

    def wait_for_failover(self, dead_address: str, timeout: float = 15.0) -> str | None:
        """Until every slot range the dead node served as a master is served by a live node, as
        every live node sees it, and every live node says cluster_state:ok. Returns the new master
        of those slots (None if the dead node served none)."""
        ranges = self.killed.get(dead_address)
        if ranges is None:
            raise ClusterError(f"{dead_address} was not killed through kill()")
        deadline = time.monotonic() + timeout
        why = "not checked"
        while time.monotonic() < deadline:
            why = None
            new_masters = set()
            for address in self.live_addresses():
                try:
                    if self.info(address).get("cluster_state") != "ok":
                        why = f"{address}: cluster_state not ok"
                        break
                    view = self.slots(address)
                except OSError as error:
                    why = f"{address}: {error}"
                    break
                for first, _ in ranges:
                    owner = next((m for f, la, m, _ in view if f <= first <= la), None)
                    if owner is None or owner == dead_address or owner not in self.live_addresses():
                        why = f"{address} sees slot {first} on {owner}"
                        break
                    new_masters.add(owner)
                if why:
                    break
            if why is None:
                if len(new_masters) > 1:
                    why = f"views differ: {sorted(new_masters)}"
                else:
                    return next(iter(new_masters), None)
            time.sleep(0.05)
        raise TimeoutError(f"no failover for {dead_address} within {timeout} s: {why}")

    def restart(self, address: str, timeout: float = 20.0) -> None:
        """Start a killed node again with its config file: it rejoins (as a replica if it was failed
        over). Waits until the cluster is healthy again."""
        if address in self.processes and self.processes[address].poll() is None:
            raise ClusterError(f"{address} is running")
        self._launch(_program("redis-server"), _split(address)[1])
        self._wait_up(address, timeout=10)
        self.killed.pop(address, None)
        self.wait_healthy(timeout)


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)
