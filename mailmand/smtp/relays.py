"""The pool of sessions to one relay: `connections` workers, the rate limit, the feed.

`Relay.send_grouped` takes a batch of `Envelope`s (or a lazy feed of them),
spreads them over up to `connections` sessions (one worker thread each,
pulling from one shared source, so a slow session does not hold back the
others) and yields the `SendResult`s that have come back, in the caller's
thread, as they come, so the dispatcher can commit them together.

Threads, not asyncio: a session spends its time waiting on its socket, which
releases the GIL, and smtplib (TLS, AUTH) is synchronous. Measured in
docs/performance.md ("Threads or asyncio"): at 100 connections through a
25 ms relay, threads reach the relay's round-trip bound at a CPU cost per
message close to an asyncio loop's.

* When no session of a batch can be opened, the envelopes left in that batch
  are answered at once with that same temporary failure instead of each one
  waiting out its own connect timeout (a black-holed relay would otherwise hold
  a 50-message batch for 25 minutes, past its lease).
* A message the relay never answered (the connection went, or 421, before its
  MAIL reply) is tried once more on a new session when the session had been
  reused or had answered before: nothing of it was accepted, so this sends
  nothing twice.
* Relay-down lines go through `repeats.Repeats`: an outage logs once, then one
  summary a minute, then one line when the relay answers again.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Sequence

from mailmand.config import SmtpConfig
from mailmand.errors import ConfigError
from mailmand.hostname import mail_domain
from mailmand.repeats import Repeats

from .batch import Batch
from .health import RelayHealth
from .outcomes import SendResult
from .protocol import Envelope, Kind, Outcome, Window, everyone
from .session import Exchange, Session, SessionError
from .throttle import Throttle, is_pushback, reply_code

log = logging.getLogger(__name__)

TLS_MODES = ("starttls", "ssl", "none")


class Relay:
    """Sessions to one relay, pooled across calls to `send_grouped`. Thread-safe."""

    def __init__(self, cfg: SmtpConfig, window: Window | None = None, *, name: str | None = None,
                 health: RelayHealth | None = None, throttle: Throttle | None = None) -> None:
        if cfg.tls not in TLS_MODES:
            raise ConfigError(f"must be one of {', '.join(TLS_MODES)}, got {cfg.tls!r}", "smtp.tls")
        if cfg.connections < 1:
            raise ConfigError(f"must be at least 1, got {cfg.connections}", "smtp.connections")
        self._cfg = cfg
        self._window = window  # BDAT: the protocol's default unless a benchmark sweeps it
        self._context = tls_context(cfg)
        self._helo = cfg.helo or mail_domain()
        self.name = name or cfg.relay
        self.health = health or RelayHealth(self.name)
        self.throttle = throttle or Throttle(self.name, cfg.connections, cfg.rate)
        self._idle: list[Session] = []
        self._out = 0  # sessions checked out by workers
        self._lock = threading.Lock()
        self._closed = False
        self._down = Repeats(log, f"relay {self.name} unavailable")
        if cfg.auth is not None and cfg.auth.username and cfg.tls == "none":
            log.warning("smtp.auth is set with tls: none; the password crosses the network in clear")

    def __repr__(self) -> str:
        return f"<Relay {self.name} {self._cfg.relay} tls={self._cfg.tls} connections={self._cfg.connections}>"

    @property
    def helo(self) -> str:
        """The name sent in EHLO."""
        return self._helo

    def send_grouped(self, envelopes: Iterable[Envelope | None], stop: threading.Event | None = None,
                     linger: float = 0.0, gather: int = 0,
                     most: int = 0) -> Generator[list[SendResult], None, None]:
        """Deliver `envelopes`; each step yields every result that has come back
        since the last one (never an empty list). A caller that commits outcomes
        can commit each list in one transaction. Without `linger` a step never
        waits for more than its first result; with it, a step waits up to
        `linger` seconds after its first for company (fewer, larger commits,
        and fewer wake-ups of the caller's thread), but not once `gather`
        results are in, nor once every worker is done. `envelopes` may be a
        lazy iterable, read from the worker threads one item at a time.

        Never raises for a delivery problem. Once `stop` is set, workers finish
        the messages they hold and take no other; envelopes never attempted are
        not yielded. Closing the generator early does the same, and the results
        still in flight are then dropped.

        With `most`, at most that many messages are out at once: handed to a
        session and not yet dealt with by the caller (a list counts as dealt
        with once the caller asks for the next). A caller that records each
        list before asking for the next has then never more than `most` messages
        delivered and not recorded: what a crash can make it send twice."""
        throttle = self.throttle
        if isinstance(envelopes, Sequence):
            if not envelopes:
                return
            n = len(envelopes)

            def limit() -> int:
                return min(throttle.connections, n)
        else:
            def limit() -> int:
                return throttle.connections
        batch = Batch(envelopes, stop, limit, self._work, gather, most)
        batch.spawn()
        try:
            finished = 0
            while finished < batch.started:
                group: list[SendResult] = []
                result = batch.results.get()
                if linger:
                    # Sleep rather than wake for each result: fewer hand-offs of the GIL.
                    batch.wake.wait(linger)
                    if not batch.over.is_set():
                        batch.wake.clear()  # (a wake-up lost here costs at most one linger)
                while True:
                    if result is None:
                        finished += 1  # a worker spawns the next before it can finish
                    else:
                        group.append(result)
                    try:
                        result = batch.results.get_nowait()
                    except queue.Empty:
                        break
                batch.read(len(group))
                if group:
                    yield group
                    batch.settle(len(group))
        finally:
            batch.abandoned.set()  # no worker is started after this
            joined = 0
            while joined < batch.started:
                batch.threads[joined].join()
                joined += 1

    def close(self) -> None:
        """QUIT every pooled session; sessions in use are closed when their worker is done."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        # In parallel: each QUIT waits a round trip for its 221, and a relay
        # 80 ms away with 20 sessions would otherwise hold a --once exit 1.6 s.
        closers = [threading.Thread(target=s.close, name="mailmand-smtp-quit", daemon=True) for s in idle]
        for thread in closers:
            thread.start()
        for thread in closers:
            thread.join(self._cfg.timeout + 1)

    # -- workers

    def _work(self, batch: Batch) -> None:
        session: Session | None = None
        try:
            session = self._run(batch)
        except Exception:  # a bug must not hang the caller waiting for this worker
            log.exception("SMTP worker failed")
        finally:
            if session is not None:
                self._checkin(session)
            batch.results.put(None)
            batch.done()

    def _run(self, batch: Batch) -> Session | None:
        session: Session | None = None
        held: dict[str, tuple[Envelope, float, float]] = {}  # handed out, no result yet
        again: deque[Envelope] = deque()  # unanswered on a lost session: once more on a new one
        retried: set[str] = set()
        shed = False

        def take(block: bool) -> Envelope | None:
            nonlocal shed
            if shed or (shed := batch.shed()):
                return None  # one session too many for the throttle: finish what is in flight, then go
            env = self._take(batch, block)
            if env is not None:
                held[env.id] = (env, time.time(), time.monotonic())
            return env

        def done(env: Envelope, outcome: Outcome) -> None:
            _, started, t0 = held.pop(env.id)
            batch.put(self._result(env, outcome, started, t0))

        def settle_all(reason: str, fault: bool = False) -> None:
            for env, _, _ in list(held.values()):
                _, started, t0 = held.pop(env.id)
                batch.put(self._result(env, everyone(env, None, reason, Kind.TEMPORARY), started, t0, fault))

        while (env := again.popleft() if again else take(True)) is not None:
            if session is None:
                batch.spawn()  # there was work: another session may find some too
                session = self._checkout()
            try:
                unanswered = session.run(env, Exchange(take, done))
            except SessionError as exc:
                if is_pushback(reply_code(exc.reason), exc.reason):
                    # Refused for load (too many connections): fewer sessions; what this one
                    # held goes to the others, untried, unless it was the last.
                    self.throttle.pushback(exc.reason)
                    self.health.replied(exc.reason)
                    if not batch.leave(shed):
                        for env_, _, _ in list(held.values()):
                            batch.hand_back(env_)
                        held.clear()
                        return session
                    settle_all(exc.reason, fault=True)
                    self._give_up(batch, exc.reason)
                    return session
                self._down.failed("relay %s unavailable: %s", self.name, exc.reason)
                self.health.failed(exc.reason)
                settle_all(exc.reason, fault=True)
                if batch.leave(shed):
                    self._give_up(batch, exc.reason)
                return session
            except Exception as exc:  # a bug: still one result per message handed out
                log.exception("delivering %s failed unexpectedly", env.id)
                session.close(quit=False)
                again.clear()
                settle_all(f"internal error: {type(exc).__name__}")
                continue
            self._down.cleared()
            if not self.health.up:
                self.health.reached()
            for u in unanswered:
                if u.retry and u.env.id not in retried:
                    log.debug("%s not answered (%s); trying it on a new session", u.env.id, u.reason)
                    retried.add(u.env.id)
                    again.append(u.env)
                    held[u.env.id] = (u.env, time.time(), time.monotonic())
                else:
                    done(u.env, everyone(u.env, u.code, u.reason, Kind.TEMPORARY))
        batch.leave(shed)
        return session

    def _take(self, batch: Batch, block: bool) -> Envelope | None:
        """The next message for a session. Not blocking, it comes only if the rate
        limit has a token ready: a message in flight is never held up for one."""
        bucket = self.throttle.bucket
        if bucket is None:
            return batch.take(block)
        if not block:
            if bucket.try_take() > 0:
                return None
            env = batch.take(block=False)
            if env is None:
                bucket.give_back()
            return env
        env = batch.take()
        if env is not None and not bucket.take(batch.stop):
            return None  # stopped while waiting for the rate limit: not attempted
        return env

    def _give_up(self, batch: Batch, reason: str) -> None:
        """No session of this batch could be opened: answer the rest without waiting
        out a connect timeout for each. A lazy feed is not drained: what it has
        not handed out yet stays where it is, for a later run."""
        batch.given_up = True
        while (env := batch.take()) is not None:
            now = time.time(), time.monotonic()
            outcome = everyone(env, None, f"relay unavailable: {reason}", Kind.TEMPORARY)
            batch.put(self._result(env, outcome, *now, fault=True))

    def _result(self, env: Envelope, outcome: Outcome, started: float, t0: float,
                fault: bool = False) -> SendResult:
        if outcome.kind is Kind.SENT:
            self.throttle.delivered()
        elif not fault and outcome.kind is Kind.TEMPORARY and is_pushback(outcome.code, outcome.reply):
            self.throttle.pushback(outcome.reply)
            fault = True
        if outcome.code is not None:
            self.health.replied(outcome.reply)
        result = SendResult(id=env.id, kind=outcome.kind, code=outcome.code, reply=outcome.reply,
                            recipients=outcome.recipients, started=started, duration=time.monotonic() - t0,
                            relay=self.name, lost_in_data=outcome.lost_in_data, relay_fault=fault)
        log.debug("%s: %s %s", env.id, result.kind, result.reply)
        return result

    # -- the pool

    def _checkout(self) -> Session:
        with self._lock:
            self._out += 1
            if self._idle:
                return self._idle.pop()  # most recently used: least likely stale
        return Session(self._cfg, self._context, self._helo, self._window)

    def _checkin(self, session: Session) -> None:
        # Kept open only within the connection limit, counting the sessions in use: a relay
        # that pushed back for too many connections counts the idle ones too.
        with self._lock:
            self._out -= 1
            if not self._closed and session.alive and self._out + len(self._idle) < self.throttle.connections:
                self._idle.append(session)
                return
        session.close()


def tls_context(cfg: SmtpConfig) -> ssl.SSLContext | None:
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
