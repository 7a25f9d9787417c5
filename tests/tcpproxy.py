"""A loopback TCP proxy that can be cut and restored: a database that goes
away and comes back, without touching the real server."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`. `down()` closes every forwarded
    connection and refuses new ones (the port is closed); `up()` listens again.
    `blackhole()` keeps the port open but forwards nothing, either way, on the
    connections there are and on new ones (a server gone dark behind a proxy or
    a NAT that still answers TCP); `restore()` ends it, closing the connections
    that lost data meanwhile, as a peer would reset them."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.port = port or _free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._dark = threading.Event()
        self._darkened: set[socket.socket] = set()  # connections that were open in the dark

    def up(self) -> TcpProxy:
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            # close() alone leaves a thread blocked in accept() holding the port open;
            # shutdown() wakes it (EINVAL), so the port is free for up() again.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for c in conns:
            _close(c)

    def blackhole(self) -> None:
        with self._lock:
            self._dark.set()
            self._darkened |= self._conns

    def restore(self) -> None:
        with self._lock:
            self._dark.clear()
            darkened, self._darkened = self._darkened, set()
            self._conns -= darkened
        for c in darkened:
            _close(c)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            if self._dark.is_set():  # taken, and never answered
                with self._lock:
                    self._darkened.add(client)
                    self._conns.add(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    _close(client)
                    _close(server)
                    return
                self._conns |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(a, b, self._dark), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket, dark: threading.Event) -> None:
    try:
        while data := src.recv(65536):
            if not dark.is_set():  # in the dark, what is sent is lost
                dst.sendall(data)
    except OSError:
        pass
    finally:
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _free_port() -> int:
    """A free port below the ephemeral range: a client retrying a closed port in that
    range can be given the port itself as its own, and connect to itself (TCP
    simultaneous open), and then the proxy could not listen there again."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
