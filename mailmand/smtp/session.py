"""One connection to the relay: sockets, TLS, AUTH, timeouts, and the loop that
moves bytes between the socket and the sans-I/O `Client` (protocol.py).

Decisions worth knowing:

* Session set-up failures (cannot connect, TLS handshake or certificate
  verification failed, STARTTLS not offered, AUTH refused) raise
  `SessionError` with a reason naming the cause; the relay pool turns it into
  a *temporary* failure with `code=None`. They are operator problems that a
  configuration fix or the relay coming back cures; failing the mail for good
  would lose it, while max-fails / max-time still bound the retries.
* smtplib opens the session (connect, EHLO, STARTTLS, AUTH: its code is
  well-trodden and keeps certificate checks against the configured host);
  the transactions then run on its socket and its buffered reader, through
  the Client, so pipelined replies are read strictly in order.
* A pooled session that went stale while idle is caught by a NOOP when it has
  been idle longer than `IDLE_PROBE`, and otherwise when its first message is
  not answered at all: with DATA that message comes back `Unanswered`, and the
  pool tries it once more on a new session (safe: nothing of it was accepted).
  With BDAT its body went out with its MAIL, so it is deferred instead; a
  reused session carries that one message alone until the relay answers.
* A connection lost after a body was sent but before its final reply is
  temporary: the relay may have queued it, so delivery is at least once.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailmand import observe
from mailmand.config import SmtpConfig

from .protocol import (
    BODY_STEPS,
    MAX_REPLY_LINE,
    REPLY_CLOSING,
    Client,
    Done,
    Envelope,
    Extensions,
    Outcome,
    ProtocolError,
    Reply,
    ReplyParser,
    Unanswered,
    Window,
)

log = logging.getLogger(__name__)

IDLE_PROBE = 5.0  # seconds idle after which a pooled session is NOOPed before reuse


class SessionError(Exception):
    """A session could not be opened (connect, TLS, AUTH); `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ConnectionClosed(ConnectionError):
    """The relay closed the connection (end of file where a reply was due)."""


# What says "the relay hung up" rather than "it went silent" (a timeout) or "it spoke nonsense".
_HUNG_UP = (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError, smtplib.SMTPServerDisconnected)


def text(code: int, msg: bytes | str) -> str:
    body = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg
    return f"{code} {' '.join(body.split())}".strip()


def describe(exc: BaseException, timeout: float) -> str:
    """A one-line reason for a failed exchange, naming the cause an operator must fix."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        return f"timed out after {timeout:g}s"  # smtplib wraps a read timeout in SMTPServerDisconnected
    if isinstance(exc, ProtocolError):
        return f"relay sent an invalid reply: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection failed: {exc.strerror or exc}"
    if isinstance(exc, ConnectionClosed):
        return "connection closed by relay"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"connection closed by relay ({exc})" if str(exc) else "connection closed by relay"
    if isinstance(exc, _HUNG_UP):
        return f"connection closed by relay ({getattr(exc, 'strerror', None) or exc})"
    if isinstance(exc, smtplib.SMTPConnectError):  # a greeting other than 220
        return f"relay refused the session: {text(exc.smtp_code, exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPResponseException):
        return text(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Exchange:
    """What one `Session.run` call hands back and out."""

    take: Callable[[bool], Envelope | None]  # the next message; may block only when asked to
    done: Callable[[Envelope, Outcome], None]  # an outcome, as soon as it is known


class Session:
    """One SMTP connection to the relay, used by one worker at a time."""

    def __init__(self, cfg: SmtpConfig, context: ssl.SSLContext | None, helo: str,
                 window: Window | None = None) -> None:
        self._cfg = cfg
        self._context = context
        self._helo = helo
        self._pipelining = cfg.pipelining != "off"
        self._chunking = cfg.chunking != "off"
        self._window = window
        self._smtp: smtplib.SMTP | None = None
        self._ext = Extensions()
        self._idle_since = 0.0
        self._timeout = cfg.timeout  # the socket's timeout now

    def __repr__(self) -> str:
        state = "open" if self._smtp else "closed"
        return f"<Session {self._cfg.relay} {state}>"

    @property
    def alive(self) -> bool:
        return self._smtp is not None

    # -- opening and closing

    def _open(self) -> smtplib.SMTP:
        cfg = self._cfg
        try:
            smtp = self._connect()
        except (smtplib.SMTPException, OSError) as exc:
            raise SessionError(describe(exc, cfg.timeout)) from None
        try:
            self._handshake(smtp)
        except SessionError:
            smtp.close()
            raise
        except (smtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise SessionError(describe(exc, cfg.timeout)) from None
        self._ext = Extensions(pipelining=smtp.has_extn("pipelining"), eightbitmime=smtp.has_extn("8bitmime"),
                               smtputf8=smtp.has_extn("smtputf8"), chunking=smtp.has_extn("chunking"))
        assert smtp.sock is not None
        if smtp.file is None:  # after STARTTLS smtplib drops its reader until the next reply
            smtp.file = smtp.sock.makefile("rb")
        # Every write is a whole group of commands (with BDAT, whole messages): Nagle's
        # algorithm would only hold a group back behind one not yet acknowledged.
        smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._timeout = cfg.timeout
        pipelining = self._pipelining and self._ext.pipelining
        log.info("connected to %s (tls=%s, pipelining=%s, chunking=%s)", cfg.relay, cfg.tls,
                 "yes" if pipelining else "no", "yes" if pipelining and self._chunking and self._ext.chunking else "no")
        self._smtp = smtp
        observe.observer.session_opened()
        return smtp

    def _connect(self) -> smtplib.SMTP:
        # Host given to the constructor, not to connect(): smtplib checks the
        # certificate against the constructor's host, for STARTTLS as well.
        cfg = self._cfg
        if cfg.tls == "ssl":
            return smtplib.SMTP_SSL(cfg.host, cfg.port, local_hostname=self._helo, timeout=cfg.timeout,
                                    context=self._context)
        return smtplib.SMTP(cfg.host, cfg.port, local_hostname=self._helo, timeout=cfg.timeout)

    def _handshake(self, smtp: smtplib.SMTP) -> None:
        cfg = self._cfg
        smtp.ehlo_or_helo_if_needed()
        if cfg.tls == "starttls":
            # Required, not opportunistic: sending in clear to a relay that
            # dropped STARTTLS (or to a downgrade attacker) is not an option.
            if not smtp.has_extn("starttls"):
                raise SessionError("relay does not offer STARTTLS (tls: starttls requires it)")
            smtp.starttls(context=self._context)
            smtp.ehlo_or_helo_if_needed()
        if cfg.auth is not None and cfg.auth.username:
            self._login(smtp)

    def _login(self, smtp: smtplib.SMTP) -> None:
        auth = self._cfg.auth
        assert auth is not None and auth.username
        password = auth.password or ""
        try:
            smtp.login(auth.username, password)
        except smtplib.SMTPNotSupportedError:
            raise SessionError("authentication failed: relay does not offer AUTH") from None
        except smtplib.SMTPAuthenticationError as exc:
            reason = text(exc.smtp_code, exc.smtp_error)
            # Scrub in case a relay echoes what it was sent; `from None` keeps
            # smtplib's frames (whose locals hold the password) off the chain.
            if password:
                reason = reason.replace(password, "***")
            raise SessionError(f"authentication failed: {reason}") from None
        except smtplib.SMTPException as exc:
            raise SessionError(f"authentication failed: {exc}") from None

    def close(self, quit: bool = True) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        observe.observer.session_closed()
        try:
            if quit:
                self._settimeout(smtp, self._cfg.timeout)
                smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass  # the session is going away either way
        finally:
            smtp.close()

    def _ready(self) -> tuple[smtplib.SMTP, bool]:
        """An open session, and whether it was reused (and so may have gone stale)."""
        if self._smtp is None:
            return self._open(), False
        if time.monotonic() - self._idle_since > IDLE_PROBE:
            try:
                code, _ = self._smtp.noop()
            except (smtplib.SMTPException, OSError):
                code = None
            if code != 250:
                log.debug("pooled session to %s went stale while idle; reopening", self._cfg.relay)
                self.close(quit=False)
                return self._open(), False
        return self._smtp, True

    # -- messages

    def run(self, first: Envelope, io: Exchange) -> list[Unanswered]:
        """Deliver `first`, then what `io.take` hands out while this session can
        carry more, reporting each outcome through `io.done` as it comes.

        Returns the messages the relay never answered because the connection
        was lost or closed (421) before their MAIL reply, marked for one more
        try on a new session when that is safe to assume harmless (the session
        was reused, or it had answered something before). Raises SessionError
        when no session can be opened; `first` is then not attempted."""
        smtp, reused = self._ready()
        client = Client(self._ext, self._pipelining, self._chunking, self._window, reused=reused)
        answered = 0
        unanswered: list[Unanswered] = []

        def settle(events: list[Done | Unanswered]) -> None:
            for event in events:
                if isinstance(event, Done):
                    io.done(event.env, event.outcome)
                else:
                    unanswered.append(event)

        try:
            self._add(client, first, io)
            while True:
                if client.ready_for_next:
                    env = io.take(not client.waiting)  # block only when nothing is in flight
                    if env is not None:
                        self._add(client, env, io)
                        continue
                if not client.waiting:
                    break
                out = client.outgoing()
                if out:
                    self._write(smtp, out, client)
                reply = self._read(smtp, client)
                answered += reply.code != REPLY_CLOSING  # a 421 proves nothing about the next session
                settle(client.receive(reply))
        except (OSError, smtplib.SMTPException, ProtocolError) as exc:
            step = client.next_step
            timeout = self._cfg.data_timeout if step in BODY_STEPS else self._cfg.timeout
            settle(client.lost(describe(exc, timeout), closed_by_relay=isinstance(exc, _HUNG_UP)))
        if client.closed:
            self.close(quit=False)
        self._idle_since = time.monotonic()
        retry = reused or answered > 0
        return [Unanswered(u.env, u.reason, u.code, retry) for u in unanswered]

    def _add(self, client: Client, env: Envelope, io: Exchange) -> None:
        refused = client.add(env)
        if refused is not None:
            io.done(env, refused)

    def _write(self, smtp: smtplib.SMTP, data: bytes, client: Client) -> None:
        # The body may be large and the relay slow to read it: DATA's timeout.
        self._settimeout(smtp, self._cfg.data_timeout if client.body_pending else self._cfg.timeout)
        assert smtp.sock is not None
        smtp.sock.sendall(data)

    def _read(self, smtp: smtplib.SMTP, client: Client) -> Reply:
        # The relay may scan the body before it answers the end of data: it gets DATA's timeout.
        self._settimeout(smtp, self._cfg.data_timeout if client.next_step in BODY_STEPS else self._cfg.timeout)
        parser = ReplyParser()
        file = smtp.file
        assert file is not None
        while True:
            line = file.readline(MAX_REPLY_LINE + 1)
            if not line:
                raise ConnectionClosed("connection closed by relay")
            reply = parser.feed(line)
            if reply is not None:
                return reply

    def _settimeout(self, smtp: smtplib.SMTP, timeout: float) -> None:
        if timeout != self._timeout and smtp.sock is not None:
            smtp.sock.settimeout(timeout)
            self._timeout = timeout
