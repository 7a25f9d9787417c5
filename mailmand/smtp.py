"""SMTP delivery to the relay: pooled sessions, TLS, AUTH, reply classification.

`Relay.send` takes a batch of `Envelope`s, spreads them over up to
`connections` sessions (one worker thread each, pulling from one shared work
queue so a slow session does not hold back the others) and yields one
`SendResult` per attempted envelope, in the caller's thread, as each comes
back, so the dispatcher can commit every outcome at once.

Classification, per recipient and per message: 2xx sent; 4xx, a timeout or a
dropped connection temporary; 5xx permanent. `kind` is the decision the retry
policy reads; `code` is only the record of the reply that decided it.

Decisions worth knowing:

* Session set-up failures (cannot connect, TLS handshake or certificate
  verification failed, STARTTLS not offered, AUTH refused) are *temporary*
  with `code=None` and a reason naming the cause. They are operator problems
  that a configuration fix or the relay coming back cures; failing the mail
  for good would lose it, while max-fails / max-time still bound the retries.
* When no session of a batch can be opened, the envelopes left in that batch
  are answered at once with that same temporary failure instead of each one
  waiting out its own connect timeout (a black-holed relay would otherwise hold
  a 50-message batch for 25 minutes, past its lease).
* RSET is sent only after an aborted transaction (MAIL, every RCPT or DATA
  refused). After a completed DATA the server has already reset its state
  (RFC 5321 §4.1.1.4), and an extra round trip per message would cost ~20% of
  the throughput on a fast relay.
* A pooled session that went stale while idle is caught by a NOOP when it has
  been idle longer than `IDLE_PROBE`, and otherwise by MAIL FROM failing with a
  dropped connection or 421: then the session is reopened and the message
  retried once, which is safe because nothing of it was accepted yet.
* A connection dropped after the body was sent but before the final reply is
  temporary: the relay may have queued it, so delivery is at least once.
"""

from __future__ import annotations

import logging
import queue
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from mailmand import observe
from mailmand.config import SmtpConfig
from mailmand.errors import ConfigError

log = logging.getLogger(__name__)

Kind = Literal["sent", "temporary", "permanent"]

TLS_MODES = ("starttls", "ssl", "none")
IDLE_PROBE = 5.0  # seconds idle after which a pooled session is NOOPed before reuse
REPLY_CLOSING = 421  # RFC 5321 §3.8: the server is closing the channel
# RFC 4954 §6 / RFC 3207 §4: "authenticate (or STARTTLS) first". It says the
# session lacks something, not that the message is bad: temporary, not 5xx-fatal.
REPLY_SESSION_REQUIRED = 530


@dataclass(frozen=True)
class Envelope:
    """What the dispatcher hands over; `raw` is the final RFC 5322 bytes, sent as is."""

    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    raw: bytes


@dataclass(frozen=True)
class RecipientResult:
    address: str
    code: int | None  # None: no reply (timeout, dropped connection, session failure)
    reply: str
    kind: Kind


@dataclass(frozen=True)
class SendResult:
    """One attempt at one message. `code`/`reply` are those that decided `kind`."""

    id: str
    kind: Kind
    code: int | None
    reply: str
    recipients: tuple[RecipientResult, ...]
    started: float  # wall clock (time.time()) when the attempt began
    duration: float  # seconds
    relay: str

    @property
    def retry_recipients(self) -> tuple[str, ...]:
        """The recipients refused for a reason that may pass: the only ones to retry."""
        return tuple(r.address for r in self.recipients if r.kind == "temporary")


def classify(code: int | None) -> Kind:
    """2xx sent, 5xx permanent; 4xx, no reply or a nonsense code temporary."""
    if code is not None and 200 <= code < 300:
        return "sent"
    if code is not None and 500 <= code < 600:
        return "permanent"
    return "temporary"


class TokenBucket:
    """A thread-safe token bucket: `rate` tokens a second, at most `capacity` saved up."""

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.capacity  # start full: the first burst goes at once
        self._last = clock()
        self._lock = threading.Lock()

    def try_take(self) -> float:
        """Take a token: 0.0 when taken, else the seconds until one is due."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate

    def take(self, stop: threading.Event | None = None) -> bool:
        """Block until a token is taken (True), or `stop` is set while waiting (False)."""
        while (wait := self.try_take()) > 0:
            if stop is None:
                time.sleep(wait)
            elif stop.wait(wait):
                return False
        return True


class _SessionError(Exception):
    """A session could not be opened (connect, TLS, AUTH); `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _Stale(Exception):
    """A reused session turned out dead at MAIL FROM: reopen and try the message again."""


class _Closing(Exception):
    """The relay answered 421 in the middle of a transaction."""

    def __init__(self, code: int, reply: str) -> None:
        self.code = code
        self.reply = reply
        super().__init__(reply)


def _text(code: int, msg: bytes | str) -> str:
    text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg
    return f"{code} {' '.join(text.split())}".strip()


def _reply(pair: tuple[int, bytes]) -> tuple[int, str]:
    code, msg = pair
    return code, _text(code, msg)


def _describe(exc: BaseException, timeout: float) -> str:
    """A one-line reason for a failed exchange, naming the cause an operator must fix."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(
        exc.__context__, TimeoutError
    ):
        return f"timed out after {timeout:g}s"  # smtplib wraps a read timeout
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"connection closed by relay ({exc})" if str(exc) else "connection closed by relay"
    if isinstance(exc, smtplib.SMTPConnectError):  # a greeting other than 220
        return f"relay refused the session: {_text(exc.smtp_code, exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPResponseException):
        return _text(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class _Replies:
    """Each recipient's result as the transaction goes; the ones left get a common end."""

    def __init__(self, rcpt_to: tuple[str, ...]) -> None:
        self._order = rcpt_to
        self._by: dict[str, RecipientResult] = {}

    def set(self, address: str, code: int | None, reply: str) -> RecipientResult:
        result = RecipientResult(address, code, reply, classify(code))
        self._by[address] = result
        return result

    def fill(self, code: int | None, reply: str, kind: Kind | None = None) -> None:
        for address in self._order:
            if address not in self._by:
                self._by[address] = RecipientResult(address, code, reply, kind or classify(code))

    def refused(self) -> list[RecipientResult]:
        return [r for r in self._by.values() if r.kind != "sent"]

    def all(self) -> tuple[RecipientResult, ...]:
        return tuple(self._by[a] for a in self._order)


# (kind, code, reply, recipients): the decision about one message
_Outcome = tuple[Kind, int | None, str, tuple[RecipientResult, ...]]


def _everyone(env: Envelope, code: int | None, reply: str, kind: Kind | None = None) -> _Outcome:
    replies = _Replies(env.rcpt_to)
    replies.fill(code, reply, kind)
    return (kind or classify(code), code, reply, replies.all())


def _none_accepted(replies: _Replies) -> _Outcome:
    """No recipient took the message: a temporary refusal outranks a permanent one,
    since the message still has somewhere to go later."""
    refused = replies.refused()
    decider = next((r for r in refused if r.kind == "temporary"), refused[0])
    return (decider.kind, decider.code, decider.reply, replies.all())


class _Session:
    """One SMTP connection to the relay, used by one worker at a time."""

    def __init__(self, cfg: SmtpConfig, context: ssl.SSLContext | None, helo: str) -> None:
        self._cfg = cfg
        self._context = context
        self._helo = helo
        self._smtp: smtplib.SMTP | None = None
        self._idle_since = 0.0

    def __repr__(self) -> str:
        state = "open" if self._smtp else "closed"
        return f"<_Session {self._cfg.relay} {state}>"

    @property
    def alive(self) -> bool:
        return self._smtp is not None

    # -- opening and closing

    def _open(self) -> smtplib.SMTP:
        cfg = self._cfg
        try:
            smtp = self._connect()
        except (smtplib.SMTPException, OSError) as exc:
            raise _SessionError(_describe(exc, cfg.timeout)) from None
        try:
            self._handshake(smtp)
        except _SessionError:
            smtp.close()
            raise
        except (smtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise _SessionError(_describe(exc, cfg.timeout)) from None
        log.info("connected to %s (tls=%s)", cfg.relay, cfg.tls)
        self._smtp = smtp
        observe.observer.session_opened()
        return smtp

    def _connect(self) -> smtplib.SMTP:
        # Host given to the constructor, not to connect(): smtplib checks the
        # certificate against the constructor's host, for STARTTLS as well.
        cfg = self._cfg
        if cfg.tls == "ssl":
            return smtplib.SMTP_SSL(
                cfg.host,
                cfg.port,
                local_hostname=self._helo,
                timeout=cfg.timeout,
                context=self._context,
            )
        return smtplib.SMTP(cfg.host, cfg.port, local_hostname=self._helo, timeout=cfg.timeout)

    def _handshake(self, smtp: smtplib.SMTP) -> None:
        cfg = self._cfg
        smtp.ehlo_or_helo_if_needed()
        if cfg.tls == "starttls":
            # Required, not opportunistic: sending in clear to a relay that
            # dropped STARTTLS (or to a downgrade attacker) is not an option.
            if not smtp.has_extn("starttls"):
                raise _SessionError("relay does not offer STARTTLS (tls: starttls requires it)")
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
            raise _SessionError("authentication failed: relay does not offer AUTH") from None
        except smtplib.SMTPAuthenticationError as exc:
            reason = _text(exc.smtp_code, exc.smtp_error)
            # Scrub in case a relay echoes what it was sent; `from None` keeps
            # smtplib's frames (whose locals hold the password) off the chain.
            if password:
                reason = reason.replace(password, "***")
            raise _SessionError(f"authentication failed: {reason}") from None
        except smtplib.SMTPException as exc:
            raise _SessionError(f"authentication failed: {exc}") from None

    def close(self, quit: bool = True) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        observe.observer.session_closed()
        try:
            if quit:
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

    # -- one message

    def deliver(self, env: Envelope) -> _Outcome:
        """One message over this session; raises _SessionError if it cannot be opened."""
        smtp, reused = self._ready()
        try:
            outcome = self._transaction(smtp, env, reused)
        except _Stale:
            log.debug("session to %s was dropped by the relay; reopening", self._cfg.relay)
            self.close(quit=False)
            outcome = self._transaction(self._open(), env, reused=False)
        self._idle_since = time.monotonic()
        return outcome

    def _transaction(self, smtp: smtplib.SMTP, env: Envelope, reused: bool) -> _Outcome:
        replies = _Replies(env.rcpt_to)
        phase = "MAIL FROM"
        try:
            options, problem = _mail_options(smtp, env)
            if problem:
                return _everyone(env, None, problem, "permanent")
            code, reply = self._mail(smtp, env, options, reused)
            if classify(code) != "sent":
                self._abort(smtp, code)
                kind: Kind | None = "temporary" if code == REPLY_SESSION_REQUIRED else None
                return _everyone(env, code, reply, kind)
            phase = "RCPT TO"
            accepted = self._rcpt_all(smtp, env, replies)
            if not accepted:
                self._abort(smtp, None)
                return _none_accepted(replies)
            phase = "DATA"
            code, reply = self._data(smtp, env.raw)
        except _Closing as exc:
            self.close(quit=False)
            replies.fill(None, f"not tried: relay closed the session ({exc.reply})", "temporary")
            return ("temporary", exc.code, exc.reply, replies.all())
        except (smtplib.SMTPException, OSError) as exc:
            self.close(quit=False)
            timeout = self._cfg.data_timeout if phase == "DATA" else self._cfg.timeout
            reason = f"{phase}: {_describe(exc, timeout)}"
            replies.fill(None, reason, "temporary")
            return ("temporary", None, reason, replies.all())
        if code == REPLY_CLOSING:
            self.close(quit=False)
        # Every accepted recipient shares DATA's fate.
        replies.fill(code, reply)
        return (classify(code), code, reply, replies.all())

    def _mail(
        self, smtp: smtplib.SMTP, env: Envelope, options: list[str], reused: bool
    ) -> tuple[int, str]:
        try:
            code, reply = _reply(smtp.mail(env.mail_from, options))
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            if reused:
                raise _Stale() from None
            raise
        if code == REPLY_CLOSING:
            if reused:
                raise _Stale()
            raise _Closing(code, reply)
        return code, reply

    def _rcpt_all(self, smtp: smtplib.SMTP, env: Envelope, replies: _Replies) -> list[str]:
        """RCPT TO each recipient separately, recording each reply."""
        accepted = []
        for address in env.rcpt_to:
            code, reply = _reply(smtp.rcpt(address))
            if classify(code) == "sent":
                accepted.append(address)  # its result is DATA's, recorded later
                continue
            replies.set(address, code, reply)
            if code == REPLY_CLOSING:
                raise _Closing(code, reply)
        return accepted

    def _data(self, smtp: smtplib.SMTP, raw: bytes) -> tuple[int, str]:
        # The body may be large and the relay may scan it before answering:
        # DATA gets its own, longer timeout.
        sock = smtp.sock
        assert sock is not None
        sock.settimeout(self._cfg.data_timeout)
        try:
            return _reply(smtp.data(raw))
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
            code, reply = exc.smtp_code, _text(exc.smtp_code, exc.smtp_error)
            if code == REPLY_CLOSING:
                raise _Closing(code, reply) from None
            self._abort(smtp, code)
            return code, reply
        finally:
            if smtp.sock is not None:
                smtp.sock.settimeout(self._cfg.timeout)

    def _abort(self, smtp: smtplib.SMTP, code: int | None) -> None:
        """End a refused transaction so the session can carry the next message."""
        if code == REPLY_CLOSING:
            self.close(quit=False)
            return
        try:
            rset_code, _ = smtp.rset()
        except (smtplib.SMTPException, OSError):
            rset_code = None
        if rset_code != 250:
            self.close(quit=False)


def _mail_options(smtp: smtplib.SMTP, env: Envelope) -> tuple[list[str], str | None]:
    """MAIL FROM parameters the message needs, or why this relay cannot take it."""
    options = []
    if not env.raw.isascii() and smtp.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")  # RFC 6152
    if not (env.mail_from.isascii() and all(a.isascii() for a in env.rcpt_to)):
        if not smtp.has_extn("smtputf8"):
            return options, "relay does not support SMTPUTF8, needed for a non-ASCII address"
        options.append("SMTPUTF8")  # RFC 6531
    return options, None


class _Batch:
    """One call to `send`: the shared source of work, the results, and who is still working.

    The source is a sequence, or any iterable read lazily (the dispatcher's
    feed, which claims the next batch from the store only when a session is
    free for it, so sessions never idle at batch boundaries)."""

    def __init__(self, envelopes: Iterable[Envelope], stop: threading.Event | None, workers: int):
        self._source: Iterator[Envelope] = iter(envelopes)
        self.finite = isinstance(envelopes, Sequence)
        self.results: queue.SimpleQueue[SendResult | None] = queue.SimpleQueue()  # None: done
        self.stop = stop
        self.abandoned = threading.Event()  # the caller closed the generator early
        self.given_up = False  # no session could be opened: take nothing more from a feed
        self._active = workers
        self._lock = threading.Lock()

    def stopped(self) -> bool:
        return self.abandoned.is_set() or (self.stop is not None and self.stop.is_set())

    def take(self) -> Envelope | None:
        with self._lock:  # one reader at a time: a feed is a generator
            if self.stopped() or (self.given_up and not self.finite):
                return None
            return next(self._source, None)

    def leave(self) -> bool:
        """A worker stops; True when it was the last one."""
        with self._lock:
            self._active -= 1
            return self._active == 0


class Relay:
    """Sessions to one relay, pooled across calls to `send`. Thread-safe."""

    def __init__(self, cfg: SmtpConfig) -> None:
        if cfg.tls not in TLS_MODES:
            raise ConfigError(f"must be one of {', '.join(TLS_MODES)}, got {cfg.tls!r}", "smtp.tls")
        if cfg.connections < 1:
            raise ConfigError(f"must be at least 1, got {cfg.connections}", "smtp.connections")
        self._cfg = cfg
        self._context = _tls_context(cfg)
        self._helo = cfg.helo or socket.getfqdn()  # once: getfqdn may hit DNS
        self._bucket = TokenBucket(cfg.rate) if cfg.rate else None
        self._idle: list[_Session] = []
        self._lock = threading.Lock()
        self._closed = False
        if cfg.auth is not None and cfg.auth.username and cfg.tls == "none":
            log.warning(
                "smtp.auth is set with tls: none; the password crosses the network in clear"
            )

    def __repr__(self) -> str:
        return f"<Relay {self._cfg.relay} tls={self._cfg.tls} connections={self._cfg.connections}>"

    def send(
        self, envelopes: Iterable[Envelope], stop: threading.Event | None = None
    ) -> Iterator[SendResult]:
        """Deliver `envelopes`, yielding each attempt's SendResult as it comes back.

        Never raises for a delivery problem. Once `stop` is set, workers finish
        the message they hold and take no other; envelopes never attempted are
        not yielded. Closing the iterator early does the same, and the results
        still in flight are then dropped.
        """
        groups = self.send_grouped(envelopes, stop)
        try:
            for group in groups:
                yield from group
        finally:
            groups.close()

    def send_grouped(
        self, envelopes: Iterable[Envelope], stop: threading.Event | None = None
    ) -> Generator[list[SendResult], None, None]:
        """As `send`, but each step yields every result that has come back since
        the last one (never an empty list, and never waiting for more than the
        first). A caller that commits outcomes can commit each list in one
        transaction: with several fast sessions the commits then keep up,
        and no result is held back waiting for company. `envelopes` may be a
        lazy iterable, read from the worker threads one item at a time."""
        if isinstance(envelopes, Sequence):
            if not envelopes:
                return
            workers = min(self._cfg.connections, len(envelopes))
        else:
            workers = self._cfg.connections  # an idle worker exits without connecting
        batch = _Batch(envelopes, stop, workers)
        threads = [
            threading.Thread(
                target=self._work, args=(batch,), name=f"mailmand-smtp-{i}", daemon=True
            )
            for i in range(workers)
        ]
        for thread in threads:
            thread.start()
        try:
            running = workers
            while running:
                group: list[SendResult] = []
                result = batch.results.get()
                while True:
                    if result is None:
                        running -= 1
                    else:
                        group.append(result)
                    if not running:
                        break
                    try:
                        result = batch.results.get_nowait()
                    except queue.Empty:
                        break
                if group:
                    yield group
        finally:
            batch.abandoned.set()
            for thread in threads:
                thread.join()

    def close(self) -> None:
        """QUIT every pooled session; sessions in use are closed when their worker is done."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()

    # -- workers

    def _work(self, batch: _Batch) -> None:
        session: _Session | None = None
        try:
            session = self._run(batch)
        except Exception:  # a bug must not hang the caller waiting for this worker
            log.exception("SMTP worker failed")
        finally:
            if session is not None:
                self._checkin(session)
            batch.results.put(None)

    def _run(self, batch: _Batch) -> _Session | None:
        session: _Session | None = None
        while (env := batch.take()) is not None:
            if self._bucket is not None and not self._bucket.take(batch.stop):
                break  # stopped while waiting for the rate limit: not attempted
            if session is None:
                session = self._checkout()
            started, t0 = time.time(), time.monotonic()
            try:
                outcome = session.deliver(env)
            except _SessionError as exc:
                log.warning("relay %s unavailable: %s", self._cfg.relay, exc.reason)
                batch.results.put(
                    self._result(env, _everyone(env, None, exc.reason, "temporary"), started, t0)
                )
                if batch.leave():
                    self._give_up(batch, exc.reason)
                return session
            except Exception as exc:  # a bug: still one result per attempted envelope
                log.exception("delivering %s failed unexpectedly", env.id)
                session.close(quit=False)
                outcome = _everyone(env, None, f"internal error: {type(exc).__name__}", "temporary")
            result = self._result(env, outcome, started, t0)
            log.debug("%s: %s %s", env.id, result.kind, result.reply)
            batch.results.put(result)
        batch.leave()
        return session

    def _give_up(self, batch: _Batch, reason: str) -> None:
        """No session of this batch could be opened: answer the rest without waiting
        out a connect timeout for each. A lazy feed is not drained: what it has
        not handed out yet stays where it is, for a later run."""
        batch.given_up = True
        while (env := batch.take()) is not None:
            now = time.time(), time.monotonic()
            outcome = _everyone(env, None, f"relay unavailable: {reason}", "temporary")
            batch.results.put(self._result(env, outcome, *now))

    def _result(self, env: Envelope, outcome: _Outcome, started: float, t0: float) -> SendResult:
        kind, code, reply, recipients = outcome
        return SendResult(
            id=env.id,
            kind=kind,
            code=code,
            reply=reply,
            recipients=recipients,
            started=started,
            duration=time.monotonic() - t0,
            relay=self._cfg.relay,
        )

    # -- the pool

    def _checkout(self) -> _Session:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # most recently used: least likely stale
        return _Session(self._cfg, self._context, self._helo)

    def _checkin(self, session: _Session) -> None:
        with self._lock:
            if not self._closed and session.alive and len(self._idle) < self._cfg.connections:
                self._idle.append(session)
                return
        session.close()


def _tls_context(cfg: SmtpConfig) -> ssl.SSLContext | None:
    if cfg.tls == "none":
        return None
    try:
        context = ssl.create_default_context(cafile=cfg.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load {cfg.ca_file}: {exc}", "smtp.ca-file") from None
    if not cfg.verify:
        log.warning("smtp.verify is false: the relay's certificate is not checked")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
