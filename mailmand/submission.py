"""SMTP submission: a listener inside `mailmand run` that takes mail from any language.

`email.server.submission.listen` opens it (off when absent). A message is
answered `250 2.0.0 queued as <id>` only once it is durable in the configured
queue, and it gets there through the same door as an application's:
`RawMessage.parse` (the message goes out byte for byte; its fields are checked
as every way in checks them; a Bcc header is dropped, its addresses stay in
the envelope; a bare name gets `email.sendmail.domain`) and the client (the
one record validation, the size limit, the queue's durability, the spool's
free-space floor). Messages that finish DATA while a queue write is in flight
go to the queue together in the next write (`groupcommit.py`: one sync for
them all); each is answered once its own write returned. The reply codes:

| when | reply |
|---|---|
| an envelope address that does not parse | 553 5.1.7 (sender), 553 5.1.3 (recipient), 501 (syntax) |
| an address field of the message that does not parse | 553 5.1.7 (From, Sender, Reply-To), 553 5.1.3 (others) |
| over `max-message-size` (SIZE is advertised) | 552 5.3.4 |
| more than `max-recipients` RCPTs | 452 4.5.3 (RFC 5321 §4.5.3.1.8) |
| AUTH configured and MAIL before it | 530 5.7.0 |
| AUTH on a listener off loopback before STARTTLS | 538 5.7.11 |
| the queue unavailable, its disk nearly full | 451 4.3.0 (the client retries) |
| a message the client would refuse (e.g. header injection, an encoded word decoding to CR/LF/NUL) | 554 5.6.0 |

A listener on a loopback address may take AUTH in clear (nothing crosses a
network); any other listener offers AUTH only after STARTTLS, and must have
`auth` or `clients` (the loader refuses an open relay). Who may connect, how
many at once, how long and how often AUTH may fail: `guard.py` and `anvil.py`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from . import hostname
from .anvil import ACCEPT_BATCH
from .client import Client
from .config import AuthConfig, Config, replace
from .config.loader import open_relay
from .config.loader import submission_tls as tls_context
from .config.values import is_loopback, split_listen
from .errors import ConfigError, InvalidAddress, InvalidMessage, MailmandError, MessageTooLarge, QueueError
from .groupcommit import GroupCommit
from .guard import Gate, Guard, GuardedSmtp
from .headers import ENVELOPE_PATH, addresses
from .raw import RawMessage
from .repeats import Repeats

log = logging.getLogger(__name__)

REPLY_MAX = 200  # characters of a reason quoted in a reply line
# Fields whose bad address is a bad sender's (RFC 3463 X.1.7), not a bad recipient's (X.1.3).
SENDER_FIELDS = frozenset({"sender", "header from", "header sender", "header reply-to"})


def _reason(exc: BaseException) -> str:
    text = exc.reason if isinstance(exc, InvalidMessage) else str(exc)
    return " ".join(text.split())[:REPLY_MAX] or type(exc).__name__


class _Handler:
    """aiosmtpd hooks: check each command as it comes, queue the message at the end of DATA."""

    def __init__(self, listener: SubmissionServer) -> None:
        self.listener = listener

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, name: str,
                          responses: list[str]) -> list[str]:
        session.host_name = name  # a handle_EHLO hook takes this over from aiosmtpd
        if self.listener.auth is None:  # nothing to log in to: do not offer it
            responses = [r for r in responses if not r[4:].startswith("AUTH")]
        return responses

    async def handle_AUTH(self, server: SMTP, session: Session, envelope: Envelope, args: list[str]) -> Any:
        if self.listener.auth is None:
            return "502 5.5.1 AUTH is not offered here"
        return MISSING  # aiosmtpd runs the mechanism and calls `authenticate`

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if self.listener.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        try:
            addresses("sender", address, single=True)
        except InvalidMessage as exc:
            return f"553 5.1.7 bad sender address: {_reason(exc)}"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        limit = self.listener.cfg.server.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            return f"452 4.5.3 Too many recipients (max-recipients is {limit})"
        try:
            addresses("recipient", address, single=True)
        except InvalidMessage as exc:
            return f"553 5.1.3 bad recipient address: {_reason(exc)}"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.mail_from is not None
        return await self.listener.queue_message(envelope.mail_from, tuple(envelope.rcpt_tos),
                                                 envelope.original_content or b"")


class SubmissionServer:
    """The listener: one asyncio loop in its own thread, a server per `listen` address."""

    def __init__(self, cfg: Config, client: Client | None = None) -> None:
        sub = cfg.server.submission
        if sub is None:
            raise ConfigError("the submission listener is off (no listen address)", "email.server.submission")
        open_relay(sub)  # as the loader refuses it, for a Config built in code
        self.cfg = cfg
        self.sub = sub
        self.auth: AuthConfig | None = sub.auth
        self.tls = tls_context(sub)
        self.guard = Guard(sub)
        self._owns_client = client is None
        self.client = client or Client(cfg)
        # The queue write waits on a sync: off the event loop, one at a time, each
        # for every message that arrived meanwhile.
        self.commits = GroupCommit(self.client.put_many, "mailmand-submission-put")
        self._domain: str | None = None  # _local_domain, once asked
        self.addresses: list[tuple[str, int]] = []  # bound, with real ports
        self._handler = _Handler(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._live: set[SMTP] = set()
        self._queue_down = Repeats(log, "submission: queue unavailable")
        self._auth_failed = Repeats(log, "submission: AUTH failures")

    # -- configuration

    def configure(self, cfg: Config) -> None:
        """A reload: AUTH, TLS and the limits apply to the next connection; `listen` needs a
        restart (the configuration's reload diff says so). A certificate that cannot be loaded
        keeps the running listener settings whole, rather than half of them."""
        sub = cfg.server.submission or self.sub  # turned off: a restart closes it
        try:
            context = tls_context(sub)
            open_relay(replace(sub, listen=self.sub.listen))
        except ConfigError as exc:
            log.error("submission: reload not applied, keeping the running listener settings: %s", exc)
            return
        self.cfg, self.sub, self.auth, self.tls = cfg, replace(sub, listen=self.sub.listen), sub.auth, context
        self.guard.configure(self.sub)
        self._domain = None  # email.sendmail.domain may have changed
        if self._owns_client:  # its limits (max-message-size, max-recipients); the queue itself needs a restart
            self.client.config = replace(cfg, queue=self.client.config.queue)

    def _smtp(self, loopback: bool, client: str) -> SMTP:
        return _Smtp(
            self, self.guard, client, self._handler,
            hostname=self.cfg.server.smtp.helo or hostname.mail_domain(),
            ident="mailmand",
            data_size_limit=self.cfg.server.max_message_size,  # advertised as SIZE; 552 past it
            enable_SMTPUTF8=False,  # the client refuses non-ASCII addresses: say so at EHLO
            decode_data=False,
            tls_context=self.tls,
            require_starttls=False,
            auth_require_tls=not loopback,  # off loopback, AUTH before STARTTLS gets 538
            authenticator=self._authenticate,
            timeout=self.sub.timeout,  # between commands, once greeted (the Guard times the greeting)
            loop=self._loop,
        )

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      data: Any) -> AuthResult:
        auth = self.auth
        ok = (auth is not None and isinstance(data, LoginPassword)
              and hmac.compare_digest(data.login, (auth.username or "").encode())
              and hmac.compare_digest(data.password, (auth.password or "").encode()))
        if ok:
            self._auth_failed.cleared()
        else:  # the login is safe to log; the password never is
            login = data.login.decode("utf-8", "replace") if isinstance(data, LoginPassword) else "?"
            self._auth_failed.failed("submission: AUTH %s refused for %r from %s", mechanism, login,
                                     session.peer)
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 on failure

    # -- the message

    def _local_domain(self) -> str:
        """What a bare name gets, asked once per configuration: the host's mail domain may
        need a name lookup, which would hold up every session on the event loop."""
        if self._domain is None:
            self._domain = self.client.local_domain()
        return self._domain

    async def queue_message(self, mail_from: str, rcpt_to: tuple[str, ...], raw: bytes) -> str:
        """Validate and enqueue, in one write with the messages that arrive meanwhile; the
        SMTP reply to the end of DATA. (The checks run on the event loop: they cost tens of
        microseconds for a plain head, less than a hand-off to a thread.)"""
        try:
            message = RawMessage.parse(raw, sender=mail_from, recipients=rcpt_to, local_domain=self._local_domain)
            record = self.client.record(message)
            await self.commits.put(record)
            message_id = record.id
        except MessageTooLarge as exc:
            return f"552 5.3.4 message too big: {_reason(exc)}"
        except InvalidAddress as exc:
            status = "5.1.7" if exc.field.lower() in SENDER_FIELDS else "5.1.3"
            return f"553 {status} {exc.field}: {_reason(exc)}"
        except InvalidMessage as exc:
            return f"554 5.6.0 message refused: {exc.field}: {_reason(exc)}"
        except QueueError as exc:
            self._queue_down.failed("submission: cannot queue, answering 451: %s", exc)
            return "451 4.3.0 cannot queue now, try again later"  # the reason (paths, hosts) stays in the log
        except Exception:  # a bug must not become a 250 or a dropped line
            log.exception("submission: queueing a message failed")
            return "451 4.3.0 internal error, try again later"
        self._queue_down.cleared()
        log.debug("submission: queued %s from %s to %d recipient(s)", message_id, mail_from, len(rcpt_to))
        return f"250 2.0.0 queued as {message_id}"

    # -- life

    def start(self) -> SubmissionServer:
        """Bind every address (raising MailmandError if one cannot be) and serve."""
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready, failure),
                                        name="mailmand-submission", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            self._close_client()
            raise failure[0]
        for (host, port), listen in zip(self.addresses, self.sub.listen, strict=True):
            loopback = is_loopback(split_listen(listen)[0])
            log.info("submission listening on %s:%d%s", host, port, "" if loopback else " (AUTH only after STARTTLS)")
            if not loopback and self.auth is not None and self.tls is None:
                log.warning("submission listener %s is not on loopback and has no tls: AUTH will be "
                            "refused (538), so no client can submit there", listen)
        return self

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self.guard.loop_errors)
        try:
            loop.run_until_complete(self._bind())
        except BaseException as exc:
            failure.append(exc)
            loop.run_until_complete(self._shutdown())
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        for listen in self.sub.listen:
            host, port = split_listen(listen)
            loopback = is_loopback(host)
            try:
                server = await loop.create_server(
                    lambda lo=loopback: Gate(self.guard, lambda client: self._smtp(lo, client)),  # type: ignore[misc]
                    host, port, reuse_address=True, backlog=ACCEPT_BATCH)
            except OSError as exc:
                raise MailmandError(f"email.server.submission.listen: cannot listen on {listen}: "
                                    f"{exc.strerror or exc}") from None
            self._servers.append(server)
            self.addresses.append(server.sockets[0].getsockname()[:2])

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for protocol in list(self._live):  # clients mid-session: they retry what got no reply
            if protocol.transport is not None:
                protocol.transport.close()
        for server in self._servers:
            await server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Stop listening; a message whose queue write is in flight finishes it (and its client
        may never hear the 250: it sends again, and the message may go out twice, never zero times)."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None
        self._close_client()

    def _close_client(self) -> None:
        self.commits.close()
        if self._owns_client:
            self.client.close()


class _Smtp(GuardedSmtp):
    """aiosmtpd's SMTP under the listener's limits, known to its listener so that a stop can
    close live sessions."""

    def __init__(self, listener: SubmissionServer, *args: Any, **kwargs: Any) -> None:
        self._listener = listener
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener._live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._listener._live.discard(self)
        super().connection_lost(error)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of MAIL FROM:/RCPT TO: and the rest of the line. aiosmtpd's own
        reading (checked against 1.4.6) runs the email package's parser and makes a
        typing.Protocol class at each call: 15 % of the listener's CPU. A plain
        `<local@domain>` is read here instead, with the same result (tests say so)."""
        m = ENVELOPE_PATH.fullmatch(arg)
        if m is None or (self.local_part_limit and len(m[1].rpartition("@")[0]) > self.local_part_limit):
            return super()._getaddr(arg)
        return m[1], m[2]
