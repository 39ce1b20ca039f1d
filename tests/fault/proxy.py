"""A TCP proxy in front of a broker that can cut every connection for a while, or let them go silent."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from stream.devtools.embedded import free_port


class CuttableProxy:
    """Forwards 127.0.0.1:``port`` (default: a free one) to ``target_port``; :meth:`cut` drops all connections
    and refuses new ones, :meth:`silence` lets them go silent instead."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self.target_port = target_port
        self._down_until = 0.0
        self._conns: set[socket.socket] = set()
        self._silent: set[socket.socket] = set()  # open, but what they receive is dropped
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if time.monotonic() < self._down_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # the connect timeout must not become an idle timeout
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if src not in self._silent:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with self._lock:
                    self._conns.discard(s)
                    self._silent.discard(s)
                # shutdown first: a close alone while the other direction's thread is blocked in recv on
                # that socket sends nothing, and the client's side stayed open and silent (the CI hang of
                # the cut scenario: a request sent before the cut never got a response nor an error)
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self, seconds: float) -> None:
        """Shut every open connection down now (its two threads then close it) and refuse new ones for ``seconds``."""
        self._down_until = time.monotonic() + seconds
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def silence(self, seconds: float) -> None:
        """Let every open connection go silent for good and refuse new ones for ``seconds``.

        A silent connection stays open and drops what either side sends: no response, no
        close, no reset (a peer gone without a reset, a NAT that forgot the flow), so only a
        client's own time-out ends a request on it.
        """
        self._down_until = time.monotonic() + seconds
        with self._lock:
            self._silent.update(self._conns)

    def close(self) -> None:
        self._stopped = True
        self._server.close()
        self.cut(0)

