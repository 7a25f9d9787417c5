"""The web listener: uvicorn serving the app in a thread of the daemon.

The socket is bound here, before the thread starts, so that a port in use is
the daemon's start-up error (as the other listeners'). uvicorn bounds the
rest: `max-connections` connections and requests at once (past it, 503),
idle keep-alive connections closed after `timeout`, and so is a connection
that has not sent a whole request head within `timeout` (`_BoundedH11`),
request heads of at most H11_MAX_HEAD bytes; request bodies are bounded by
the routes that read them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..client import Client
from ..config import Config
from ..errors import MailmandError
from ..metrics import Health
from ..stores import open_store
from ..stores.base import Store
from .app import build_app
from .context import WebContext

log = logging.getLogger(__name__)

H11_MAX_HEAD = 16 * 1024  # bytes of request line and headers
BACKLOG = 128  # connections waiting to be accepted
START_TIMEOUT = 10.0  # seconds for the server thread to start listening
STOP_GRACE = 5  # seconds requests in flight get to finish at a stop


class _BoundedH11(H11Protocol):
    """uvicorn's h11 protocol, with a time limit to send a request head: uvicorn times
    out an idle keep-alive connection, but not one that never finishes a request (a
    connection that sends nothing, or a byte a second), and `max-connections` of those
    would shut everyone else out (503). Reads uvicorn's `cycle`, the request being
    answered (a new one for each request head): checked against uvicorn 0.55."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_deadline()

    def _head_deadline(self) -> None:
        self.loop.call_later(self.timeout_keep_alive, self._head_overdue, self.cycle)

    def _head_overdue(self, cycle_then: object) -> None:
        if self.cycle is cycle_then and not self.transport.is_closing():
            self.transport.close()  # no new request head since the deadline was set


class WebServer:
    """Started and stopped with the daemon (one of its services)."""

    def __init__(self, cfg: Config, health: Health, wake: Callable[[], None] = lambda: None,
                 daemon_id: str = "", store: Store | None = None, client: Client | None = None) -> None:
        assert cfg.server.web is not None
        # A store handle of its own (SQLite: a connection of its own, WAL lets it read beside the
        # daemon's): a slow page never holds the lock dispatch and ingest write under.
        self._own_store = store is None
        self.ctx = WebContext(cfg=cfg, store=store or open_store(cfg.server.database),
                              client=client or Client(cfg), clock=time.time, health=health.report, wake=wake,
                              daemon_id=daemon_id)
        self.app = build_app(self.ctx)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when 0 was asked)."""
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def _bind(self) -> socket.socket:
        from ..config.values import split_listen

        listen = self.ctx.web.listen
        host, port = split_listen(listen)
        # IPPROTO_TCP, named: asyncio sets TCP_NODELAY only on sockets that say so, and without it
        # a response written in two parts waits for the client's delayed ACK (40 ms a request).
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise MailmandError(f"email.server.web.listen: cannot listen on {listen}: {exc.strerror or exc}") from None
        return sock

    def start(self) -> WebServer:
        web = self.ctx.web
        try:
            self._sock = self._bind()
        except BaseException:
            self.stop()  # its store and queue handles
            raise
        config = uvicorn.Config(
            self.app, loop="asyncio", http=_BoundedH11, lifespan="off", ws="none", interface="asgi3",
            log_config=None, log_level=None, access_log=False,  # the daemon's logging, not uvicorn's
            server_header=False, proxy_headers=False,
            limit_concurrency=web.max_connections, timeout_keep_alive=max(1, round(web.timeout)),
            timeout_graceful_shutdown=STOP_GRACE, backlog=BACKLOG, h11_max_incomplete_event_size=H11_MAX_HEAD,
        )
        self._server = uvicorn.Server(config)
        sock = self._sock
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="mailmand-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.stop()
            raise MailmandError("email.server.web: the web server did not start")
        host, port = self.address
        log.info("web API and dashboard on http://%s:%d/ (%s)", host if ":" not in host else f"[{host}]", port,
                 "token required" if web.token else "no token: loopback only")
        return self

    def configure(self, cfg: Config) -> None:
        """A reload: a new token applies to the next request (`listen` needs a restart)."""
        if cfg.server.web is not None:
            self.ctx.cfg = cfg

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=STOP_GRACE + 5)
            self._thread = None
        self.ctx.commits.close()
        self.ctx.client.close()
        if self._own_store:
            self.ctx.store.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._server = None
