"""How long a call to PostgreSQL may wait for its answer: `email.server.database.timeout`.

TCP keepalives and tcp_user_timeout find a server that went dark behind a
dead link, but not one behind something that keeps answering TCP for it (a
proxy or a load balancer that lost its backend, a NAT that still acks):
there the query is acked and waits forever, and so does the daemon (a known
psycopg limitation: github.com/psycopg/psycopg/issues/1371). So each call is timed here, from asking the pool for a
connection until the connection is back in the pool: past `timeout`, the
watcher shuts the connection's socket down, which ends libpq's wait with an
error. The call raises, the pool discards the connection, and the store says
it is unavailable; the next call gets a fresh connection (connect_timeout
bounds that one). No thread is left waiting on a server that will not answer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class Call:
    """One call in flight: when it started, and its connection once the pool gave one."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.conn: Any = None
        self.cut = False  # the watcher closed its connection: it had no answer in time


class Deadlines:
    def __init__(self, timeout: float, name: str) -> None:
        self.timeout = timeout
        self.name = name
        self._calls: dict[int, Call] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @contextmanager
    def call(self) -> Iterator[Call]:
        """Time what runs inside; `attach` its connection as soon as it has one."""
        call = Call()
        with self._lock:
            self._calls[id(call)] = call
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="mailmand-pg-deadline", daemon=True)
                self._thread.start()
        self._local.call = call
        try:
            yield call
        finally:
            self._local.call = None
            with self._lock:  # after this, the watcher can no longer touch the connection
                self._calls.pop(id(call), None)

    def attach(self, conn: Any) -> None:
        """The connection the current thread's call runs on (also from the pool's check)."""
        call = getattr(self._local, "call", None)
        if call is not None:
            with self._lock:
                call.conn = conn

    def waiting(self) -> float:
        """Seconds the oldest call in flight has waited (0 when none): what /healthz reports."""
        with self._lock:
            starts = [c.started for c in self._calls.values()]
        return time.monotonic() - min(starts) if starts else 0.0

    def _watch(self) -> None:
        tick = max(0.05, min(1.0, self.timeout / 4))
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                for call in self._calls.values():
                    if call.conn is not None and not call.cut and now - call.started >= self.timeout:
                        call.cut = True
                        _shut(call.conn)
                        log.debug("%s: no answer in %.0fs: closed the connection", self.name, now - call.started)

    def close(self) -> None:
        self._stop.set()


def _shut(conn: Any) -> None:
    """Shut the connection's socket down under libpq: its wait ends with an error. (Its
    file descriptor stays libpq's to close; shutdown acts on the socket, through a dup.)"""
    try:
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # noqa: BLE001 (closed meanwhile: nothing left to cut)
        pass
