"""A real HTTP(S) receiver on loopback for webhook tests: it keeps every POST
(headers and body, in arrival order) and answers as scripted.

Script (plain attributes, read as each POST arrives, so a test can change them
while it runs): `status` (the answer, 200 by default), `hang` (a
threading.Event: a POST that comes while it is set gets no answer, ever; it is
kept with status 0).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: it never did)

    @property
    def events(self) -> list[dict[str, Any]]:
        return json.loads(self.body)

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.events]


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.status = 200
        self.hang = threading.Event()
        self.posts: list[Post] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real endpoint

            def do_POST(self) -> None:  # noqa: N802 (the base class's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if receiver.hang.is_set():  # no answer: the client gives up meanwhile
                    receiver._keep(Post(self.path, headers, body, 0))
                    while receiver.hang.is_set():
                        time.sleep(0.05)
                    self.close_connection = True
                    return
                status = receiver.status
                receiver._keep(Post(self.path, headers, body, status))
                answer = b"ok" if status < 300 else b"not now"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/hooks/mail?k=1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _keep(self, post: Post) -> None:
        with self._lock:
            self.posts.append(post)

    def acked(self) -> list[Post]:
        with self._lock:
            return [p for p in self.posts if 200 <= p.status < 300]

    def events(self) -> list[dict[str, Any]]:
        """Every event acknowledged, in arrival order, each once (the first time it came)."""
        seen: dict[str, dict[str, Any]] = {}
        for post in self.acked():
            for e in post.events:
                seen.setdefault(e["id"], e)
        return list(seen.values())

    def stop(self) -> None:
        self.hang.clear()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A factory: receiver(tls=None) -> Receiver; every one stopped at teardown."""
    made: list[Receiver] = []

    def make(tls: ssl.SSLContext | None = None) -> Receiver:
        made.append(Receiver(tls))
        return made[-1]

    yield make
    for r in made:
        r.stop()
