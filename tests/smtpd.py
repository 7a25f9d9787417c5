"""Scripted SMTP servers for tests: aiosmtpd on a free loopback port.

Loaded as a pytest plugin (`pytest_plugins = ("tests.smtpd",)`), it gives the
fixtures `smtp_server` (a factory: `smtp_server(**script) -> SmtpServer`, every
server stopped at teardown) and `tls_ca` (a trustme CA with a certificate for
127.0.0.1 and localhost).

The script is plain attributes, read as each command arrives, so a test can
change them while the server runs (answer 451, then 250):

- `mail_reply`, `rcpt_replies[address]`, `data_reply`: a full reply line such
  as "550 5.1.1 no such user"; None (or absent) accepts. A 421 reply closes
  the connection after it is sent, as RFC 5321 §3.8 has servers do.
- `drop_in_data`: close the connection once the body is in, with no reply
  (True: every message; an address: the messages to that recipient).
- `smtputf8`: offer SMTPUTF8 (RFC 6531; default True).
- `stall`: seconds to sleep before answering the end of DATA.
- `auth`: (user, password) that MAIL FROM requires to have logged in
  (AUTH PLAIN/LOGIN offered, in clear too: `auth_require_tls=False`).
- `tls`: "starttls" (offered and required), "ssl" (implicit TLS) or None.
- `idle_timeout`: seconds after which the server drops an idle client.
- `pipelining`: advertise PIPELINING (RFC 2920) in the EHLO reply (default
  True; aiosmtpd reads pipelined commands in order either way).
- `gate`: a threading.Event; while it is not set, the end of DATA is not
  answered (`held` counts the messages waiting at it).
- `max_sessions`: a connection past this many open at once is greeted with
  `421 4.7.0 too many connections` and closed (counted in `refused_sessions`).
- `ceiling`: messages a second the server takes; a MAIL past it in the last
  second is answered `421 4.7.0 too many messages` and the connection closed
  (counted in `refused_messages`).

What the server saw: `messages`, `helos` (EHLO/HELO names), `chunks` (each
read from a client, as received: a client that does not pipeline sends one
command per chunk), `connections`, `active`.

`auth`, `tls` (starttls/None) and `idle_timeout` apply to connections accepted
after the change; switching to or from "ssl" restarts the listener on the
same port.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()


class TlsCa:
    """A private CA and a server certificate for 127.0.0.1/localhost."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert(HOST, "localhost")
        self.ca_file = directory / "ca.pem"  # pass as SmtpConfig.ca_file
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        return context


class _Smtp(SMTP):
    """aiosmtpd's SMTP, reporting connections to its SmtpServer."""

    def __init__(self, owner: SmtpServer, *args: Any, **kwargs: Any) -> None:
        self._owner = owner
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # STARTTLS calls this again on the same client
        super().connection_made(transport)
        if first:
            self._owner._opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._owner._closed(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._owner._chunk(data)
        super().data_received(data)

    async def _handle_client(self) -> None:  # aiosmtpd's private step, greeting first (checked with 1.4)
        if self._owner._too_many(self):
            await self.push("421 4.7.0 too many connections from your host, try again later")
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()


class _Handler:
    """aiosmtpd handler hooks that read the owner's script as each command arrives."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # the new-style hook takes this over from aiosmtpd
        self.owner._helo(hostname)
        if self.owner.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        self.owner._helo(hostname)
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        owner = self.owner
        if owner.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if owner.mail_reply:
            return _answer(server, owner.mail_reply)
        if not owner._under_ceiling():
            return _answer(server, "421 4.7.0 too many messages, slow down")
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.owner.rcpt_replies.get(address)
        if reply:
            return _answer(server, reply)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        drop = owner.drop_in_data
        if drop is True or (isinstance(drop, str) and drop in envelope.rcpt_tos):
            assert server.transport is not None
            server.transport.close()
            await asyncio.Event().wait()  # cancelled by connection_lost: no reply ever
        if owner.stall:
            await asyncio.sleep(owner.stall)
        gate = owner.gate
        if gate is not None and not gate.is_set():
            owner._hold(+1)
            try:
                while not gate.is_set():
                    await asyncio.sleep(0.005)
            finally:
                owner._hold(-1)
        if owner.data_reply:
            return _answer(server, owner.data_reply)
        data = envelope.original_content or b""
        assert envelope.mail_from is not None
        owner._record(
            Received(
                envelope.mail_from, tuple(envelope.rcpt_tos), data, tuple(envelope.mail_options)
            )
        )
        return "250 2.0.0 OK queued"


def _answer(server: SMTP, reply: str) -> str:
    if reply.startswith("421"):
        # After the reply is written (the handler's caller pushes it first).
        assert server.transport is not None
        asyncio.get_running_loop().call_soon(server.transport.close)
    return reply


class _Controller(Controller):
    def __init__(self, owner: SmtpServer, port: int, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(owner._handler, hostname=HOST, port=port, ssl_context=ssl_context)
        self.owner = owner

    def factory(self) -> SMTP:
        return _Smtp(self.owner, self.handler, **self.owner._session_kwargs())

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the port the kernel chose before aiosmtpd's probe.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SmtpServer:
    """A scripted SMTP server on 127.0.0.1 and a free port, started at construction."""

    def __init__(
        self,
        *,
        tls: str | None = None,
        tls_ca: TlsCa | None = None,
        mail_reply: str | None = None,
        rcpt_replies: dict[str, str] | None = None,
        data_reply: str | None = None,
        drop_in_data: bool | str = False,
        smtputf8: bool = True,
        stall: float = 0.0,
        auth: tuple[str, str] | None = None,
        idle_timeout: float = 300.0,
        pipelining: bool = True,
        gate: threading.Event | None = None,
        max_sessions: int | None = None,
        ceiling: float | None = None,
    ) -> None:
        if tls not in (None, "starttls", "ssl"):
            raise ValueError(f"tls must be starttls, ssl or None, got {tls!r}")
        if tls and tls_ca is None:
            raise ValueError("tls needs tls_ca")
        self.tls_ca = tls_ca
        self.mail_reply = mail_reply
        self.rcpt_replies = dict(rcpt_replies or {})
        self.data_reply = data_reply
        self.drop_in_data = drop_in_data
        self.smtputf8 = smtputf8
        self.stall = stall
        self.auth = auth
        self.idle_timeout = idle_timeout
        self.pipelining = pipelining
        self.gate = gate
        self.max_sessions = max_sessions
        self.ceiling = ceiling
        self.refused_sessions = 0
        self.refused_messages = 0
        self.accepted_at: list[float] = []  # when each MAIL under the ceiling was accepted (monotonic)
        self.refused_at: list[float] = []  # when each MAIL past it was refused
        self._tls = tls
        self._handler = _Handler(self)
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._helos: list[str] = []
        self._chunks: list[bytes] = []
        self._held = 0
        self._connections = 0
        self._live: set[_Smtp] = set()
        self._admitted: set[_Smtp] = set()  # connections past the max_sessions check
        self._controller: _Controller | None = None
        self._last_port = 0
        self._start(0)

    def __repr__(self) -> str:
        return f"<SmtpServer {self.host}:{self.port} tls={self.tls}>"

    # -- what a test reads

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        assert self._controller is not None
        return int(self._controller.port)

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    @property
    def helos(self) -> list[str]:
        with self._lock:
            return list(self._helos)

    @property
    def chunks(self) -> list[bytes]:
        with self._lock:
            return list(self._chunks)

    @property
    def held(self) -> int:
        """Messages waiting at the end of DATA for `gate`."""
        with self._lock:
            return self._held

    @property
    def connections(self) -> int:
        """Client connections accepted since start."""
        with self._lock:
            return self._connections

    @property
    def active(self) -> int:
        """Client connections open now."""
        with self._lock:
            return len(self._live)

    @property
    def tls(self) -> str | None:
        return self._tls

    @tls.setter
    def tls(self, value: str | None) -> None:
        if value and self.tls_ca is None:
            raise ValueError("tls needs tls_ca")
        restart = (value == "ssl") != (self._tls == "ssl")
        self._tls = value
        if restart and self._controller is not None:
            port = self.port
            self._controller.stop()
            self._start(port)

    # -- control

    def drop_connections(self) -> None:
        """Close every client connection now, without a word (a relay's idle cut)."""
        assert self._controller is not None

        async def close_all() -> None:
            for protocol in list(self._live):
                if protocol.transport is not None:
                    protocol.transport.close()
            await asyncio.sleep(0.05)  # let connection_lost run

        future = asyncio.run_coroutine_threadsafe(close_all(), self._controller.loop)
        future.result(timeout=5)

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            self._last_port = int(controller.port)
            controller.stop()

    def restart(self) -> None:
        """Listen again on the port it had before `stop()` (a relay coming back)."""
        if self._controller is None:
            self._start(self._last_port)

    # -- plumbing

    def _start(self, port: int) -> None:
        context = self.tls_ca.server_context() if self._tls == "ssl" and self.tls_ca else None
        controller = _Controller(self, port, context)
        controller.start()
        self._controller = controller
        with self._lock:
            self._connections = 0  # the controller's own start-up probe is not a client

    def _session_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "hostname": "mx.test",
            "enable_SMTPUTF8": self.smtputf8,
            "timeout": self.idle_timeout,
            # Offer AUTH in clear for the plain tests; MAIL FROM enforces it
            # (auth_required=True would make aiosmtpd warn, an error under pytest).
            "auth_require_tls": False,
        }
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticate
        if self._tls == "starttls" and self.tls_ca is not None:
            kwargs["tls_context"] = self.tls_ca.server_context()
            kwargs["require_starttls"] = True
        return kwargs

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if self.auth is None or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        given = (data.login.decode(), data.password.decode())
        # handled=False: let aiosmtpd answer 535 itself on failure.
        return AuthResult(success=given == self.auth, handled=False)

    def _record(self, message: Received) -> None:
        with self._lock:
            self._messages.append(message)

    def _helo(self, name: str) -> None:
        with self._lock:
            self._helos.append(name)

    def _chunk(self, data: bytes) -> None:
        with self._lock:
            self._chunks.append(data)

    def _hold(self, delta: int) -> None:
        with self._lock:
            self._held += delta

    def _too_many(self, protocol: _Smtp) -> bool:
        # Sessions admitted, not connections open: a refused connection is no session, however
        # late its close is seen here (under load the loop may not have run connection_lost yet).
        with self._lock:
            if self.max_sessions is not None and len(self._admitted) >= self.max_sessions:
                self.refused_sessions += 1
                return True
            self._admitted.add(protocol)
            return False

    def _under_ceiling(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if self.ceiling is not None:
                recent = [t for t in self.accepted_at[-int(self.ceiling) - 1:] if t > now - 1.0]
                if len(recent) >= self.ceiling:
                    self.refused_messages += 1
                    self.refused_at.append(now)
                    return False
            self.accepted_at.append(now)
            return True

    def _opened(self, protocol: _Smtp) -> None:
        with self._lock:
            self._connections += 1
            self._live.add(protocol)

    def _closed(self, protocol: _Smtp) -> None:
        with self._lock:
            self._live.discard(protocol)
            self._admitted.discard(protocol)


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsCa:
    return TlsCa(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., SmtpServer]]:
    servers: list[SmtpServer] = []

    def start(**script: Any) -> SmtpServer:
        if script.get("tls") and "tls_ca" not in script:
            script["tls_ca"] = request.getfixturevalue("tls_ca")
        server = SmtpServer(**script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
