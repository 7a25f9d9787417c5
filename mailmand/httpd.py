"""A small HTTP server for the daemon's endpoints, bounded in threads and in time.

wsgiref's server with a thread per connection would hold a thread for each
client that connects and says nothing (300 idle connections: 300 threads),
for as long as the client likes. Here one thread accepts and watches every
connection in a selector, reads what each sends, and hands a connection to
one of WORKERS threads only once its request head has arrived whole; a connection that has not
sent it within REQUEST_TIMEOUT, or sends more than HEAD_MAX bytes of it, is
closed, and past MAX_OPEN waiting connections the oldest is closed for the
newest. A worker then answers with socket timeouts of IO_TIMEOUT: a client
that stops reading the answer cannot hold it either. Paths that answer from
memory (`/healthz`) have a worker of their own, so that slow answers (a
scrape waiting on a store) never hold them up.
"""

from __future__ import annotations

import io
import selectors
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

WORKERS = 4  # requests answered at once
FAST_PATHS = (b"/healthz",)  # answered by a worker of their own
MAX_OPEN = 128  # connections waiting for their request head, at most
REQUEST_TIMEOUT = 5.0  # seconds to send the request head
IO_TIMEOUT = 10.0  # seconds for each read and write while answering
HEAD_MAX = 8192  # bytes of request line and headers (GET requests: no body)


class HeadHandler(WSGIRequestHandler):
    """Reads the request head the server has already taken off the socket (GET: no body)."""

    server: BoundedWSGIServer

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BytesIO(self.server.heads.pop(self.connection, b""))


class BoundedWSGIServer(WSGIServer):
    """WSGIServer whose `serve_forever` gates connections as above; its handler must be a HeadHandler."""

    request_queue_size = 64

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._wake_r, self._wake_w = socket.socketpair()  # first: a failed bind calls server_close
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="mailmand-http")
        self._fast = ThreadPoolExecutor(1, thread_name_prefix="mailmand-http-fast")
        self._waiting: OrderedDict[socket.socket, tuple[float, object]] = OrderedDict()  # by arrival
        self._read: dict[socket.socket, bytes] = {}  # what each waiting connection has sent so far
        self.heads: dict[socket.socket, bytes] = {}  # whole request heads, for the handlers
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        sel = selectors.DefaultSelector()
        self.socket.setblocking(False)
        sel.register(self.socket, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select(timeout=min(poll_interval, REQUEST_TIMEOUT / 4)):
                    if key.data == "listen":
                        self._accept(sel)
                    elif key.data != "wake":
                        self._ready(sel, key.fileobj)  # type: ignore[arg-type]
                self._expire(sel)
        finally:
            for conn in list(self._waiting):
                self._drop(sel, conn)
            sel.close()
            self._stopped.set()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            conn, address = self.socket.accept()
        except OSError:  # out of file handles, or the client gave up: the next event retries
            return
        conn.setblocking(False)
        if len(self._waiting) >= MAX_OPEN:
            self._drop(sel, next(iter(self._waiting)))  # the oldest waits longest: it goes
        self._waiting[conn] = (time.monotonic() + REQUEST_TIMEOUT, address)
        sel.register(conn, selectors.EVENT_READ, address)

    def _ready(self, sel: selectors.BaseSelector, conn: socket.socket) -> None:
        try:
            chunk = conn.recv(HEAD_MAX)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        head = self._read.get(conn, b"") + chunk
        if not chunk or len(head) > HEAD_MAX:
            self._drop(sel, conn)  # closed, failed or too long
            return
        if b"\r\n\r\n" not in head and b"\n\n" not in head:
            self._read[conn] = head  # not whole yet
            return
        sel.unregister(conn)
        _, address = self._waiting.pop(conn)
        self._read.pop(conn, None)
        self.heads[conn] = head
        conn.setblocking(True)
        conn.settimeout(IO_TIMEOUT)
        path = head.split(b"\n", 1)[0].split(b" ")[1:2]
        fast = bool(path) and path[0].split(b"?", 1)[0] in FAST_PATHS
        (self._fast if fast else self._workers).submit(self._answer, conn, address)

    def _answer(self, conn: socket.socket, address: object) -> None:
        try:
            self.finish_request(conn, address)  # type: ignore[arg-type]
        except Exception:
            self.handle_error(conn, address)  # type: ignore[arg-type]
        finally:
            self.heads.pop(conn, None)
            self.shutdown_request(conn)

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn, (deadline, _) in list(self._waiting.items()):
            if deadline > now:
                break  # in order of arrival: the rest are younger
            self._drop(sel, conn)

    def _drop(self, sel: selectors.BaseSelector, conn: socket.socket) -> None:
        self._waiting.pop(conn, None)
        self._read.pop(conn, None)
        try:
            sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        self.shutdown_request(conn)

    def shutdown(self) -> None:
        self._stopping.set()
        self._wake_w.send(b"x")
        self._stopped.wait(timeout=10)
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._fast.shutdown(wait=False, cancel_futures=True)

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()
