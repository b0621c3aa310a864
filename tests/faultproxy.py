"""A TCP proxy on loopback that injects the faults a network gives a Redis client.

- :meth:`FaultProxy.hold_reply` delays the server's reply to the next request that contains a
  marker (e.g. ``b"EVAL"``) by some seconds: the client times out although the server ran the
  command (a lost reply).
- :meth:`FaultProxy.blackhole` from then on holds every reply and stalls new connections, until
  :meth:`FaultProxy.heal` (an outage the client can only time out on).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._hold_s = 0.0
        self._dark = threading.Event()
        self._dark_after: bytes | None = None
        self._closed = False
        self._sockets: list[socket.socket] = []
        #: Requests whose replies were held.
        self.held = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold_reply(self, marker: bytes, seconds: float) -> None:
        """Delay the reply to the next request containing ``marker`` by ``seconds``."""
        with self._lock:
            self._marker, self._hold_s = marker, seconds

    def blackhole(self, after: bytes | None = None) -> None:
        """Hold every reply and stall new connections: now, or from the next request that
        contains ``after`` (its reply held too)."""
        if after is None:
            self._dark.set()
        else:
            with self._lock:
                self._dark_after = after

    def heal(self) -> None:
        with self._lock:
            self._dark_after = None
        self._dark.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    # --- plumbing --------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        while self._dark.is_set() and not self._closed:
            time.sleep(0.01)  # a new connection in an outage hangs (the client's timeout fires)
        try:
            server = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        self._sockets += [client, server]
        hold = {"until": 0.0}
        threading.Thread(target=self._pump, args=(client, server, hold, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, hold, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, hold: dict, requests: bool) -> None:
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                if requests:
                    with self._lock:
                        if self._dark_after is not None and self._dark_after in data:
                            self._dark.set()
                            self._dark_after = None
                            self.held += 1
                        if self._marker is not None and self._marker in data:
                            hold["until"] = time.monotonic() + self._hold_s
                            self._marker = None
                            self.held += 1
                else:
                    while (time.monotonic() < hold["until"] or self._dark.is_set()) and not self._closed:
                        time.sleep(0.01)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
