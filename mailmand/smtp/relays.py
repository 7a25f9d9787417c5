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
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass

from mailmand.config import SmtpConfig
from mailmand.errors import ConfigError
from mailmand.hostname import mail_domain
from mailmand.repeats import Repeats

from .protocol import Envelope, Kind, Outcome, RecipientResult, Window, everyone
from .session import Exchange, Session, SessionError

log = logging.getLogger(__name__)

TLS_MODES = ("starttls", "ssl", "none")


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
    lost_in_data: bool = False  # the relay hung up after accepting the envelope (see Outcome)

    @property
    def retry_recipients(self) -> tuple[str, ...]:
        """The recipients refused for a reason that may pass: the only ones to retry."""
        return tuple(r.address for r in self.recipients if r.kind is Kind.TEMPORARY)

    @property
    def answered(self) -> bool:
        """The relay said something about this message (a reply code), or hung up on it
        after accepting its envelope: the attempts that count toward max-fails."""
        return self.code is not None or self.lost_in_data or any(r.code is not None for r in self.recipients)


class TokenBucket:
    """A thread-safe token bucket: `rate` tokens a second, at most `capacity` saved up."""

    def __init__(self, rate: float, capacity: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
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

    def give_back(self) -> None:
        """Return a token taken for a message that did not come."""
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + 1.0)

    def take(self, stop: threading.Event | None = None) -> bool:
        """Block until a token is taken (True), or `stop` is set while waiting (False)."""
        while (wait := self.try_take()) > 0:
            if stop is None:
                time.sleep(wait)
            elif stop.wait(wait):
                return False
        return True


_END = Envelope("", "", (), b"")  # the source is over (next() default: a feed may yield None)


class _Batch:
    """One call to `send_grouped`: the shared source of work, the results, and the workers.

    The source is a sequence, or any iterable read lazily (the dispatcher's
    feed, which claims the next batch from the store only when a session is
    free for it, so sessions never idle at batch boundaries).

    Workers start one at a time, each new one when the one before found
    work: an idle tick with `connections: 100` starts one thread, not 100,
    and a busy one reaches 100 within a few messages."""

    def __init__(self, envelopes: Iterable[Envelope | None], stop: threading.Event | None, limit: int,
                 target: Callable[[_Batch], None], gather: int = 0):
        self._source: Iterator[Envelope | None] = iter(envelopes)
        self.finite = isinstance(envelopes, Sequence)
        self.results: queue.SimpleQueue[SendResult | None] = queue.SimpleQueue()  # None: a worker is done
        self.stop = stop
        self.abandoned = threading.Event()  # the caller closed the generator early
        self.given_up = False  # no session could be opened: take nothing more from a feed
        self.broken = False  # the source raised: take nothing more
        self.threads: list[threading.Thread] = []  # only ever appended to
        self.over = threading.Event()  # every worker started so far is done
        self.wake = threading.Event()  # for a lingering caller: `gather` results are in, or `over`
        self._gather = gather
        self._unread = 0  # results put and not yet taken by the caller
        self._count_lock = threading.Lock()
        self._done = 0
        self._limit = limit
        self._target = target
        self._active = 0
        self._lock = threading.Lock()

    def stopped(self) -> bool:
        return self.abandoned.is_set() or (self.stop is not None and self.stop.is_set())

    def spawn(self) -> None:
        """Start one more worker, unless there are enough or the batch is over."""
        with self._lock:
            if len(self.threads) >= self._limit or self.stopped() or self.given_up:
                return
            thread = threading.Thread(target=self._target, args=(self,), daemon=True,
                                      name=f"mailmand-smtp-{len(self.threads)}")
            self.threads.append(thread)  # before its None can be counted: the caller waits for it
            self._active += 1
        thread.start()

    @property
    def started(self) -> int:
        with self._lock:
            return len(self.threads)

    def take(self, block: bool = True) -> Envelope | None:
        """The next message, or None when there is none. A lazy source may answer
        None for "nothing now" (the dispatcher's feed, with no room for a claim
        until outcomes in flight are recorded): a blocking take asks again, a
        non-blocking one returns None, so its session goes on with what it holds."""
        while True:
            with self._lock:  # one reader at a time: a feed is a generator
                if self.stopped() or self.broken or (self.given_up and not self.finite):
                    return None
                try:
                    env = next(self._source, _END)
                except Exception:  # the feed failed (store trouble): messages in flight still finish
                    log.exception("the dispatch feed failed; this run takes no more messages")
                    self.broken = True
                    return None
            if env is _END:
                return None
            if env is not None or not block:
                return env

    def put(self, result: SendResult) -> None:
        with self._count_lock:
            self._unread += 1
            if self._gather and self._unread >= self._gather:
                self.wake.set()
        self.results.put(result)

    def read(self, n: int) -> None:
        """The caller has taken `n` results."""
        with self._count_lock:
            self._unread -= n

    def done(self) -> None:
        """A worker has put its last result."""
        with self._lock:
            self._done += 1
            if self._done == len(self.threads):
                self.over.set()
                self.wake.set()

    def leave(self) -> bool:
        """A worker stops; True when it was the last one."""
        with self._lock:
            self._active -= 1
            return self._active == 0


class Relay:
    """Sessions to one relay, pooled across calls to `send_grouped`. Thread-safe."""

    def __init__(self, cfg: SmtpConfig, window: Window | None = None) -> None:
        if cfg.tls not in TLS_MODES:
            raise ConfigError(f"must be one of {', '.join(TLS_MODES)}, got {cfg.tls!r}", "smtp.tls")
        if cfg.connections < 1:
            raise ConfigError(f"must be at least 1, got {cfg.connections}", "smtp.connections")
        self._cfg = cfg
        self._window = window  # BDAT: the protocol's default unless a benchmark sweeps it
        self._context = tls_context(cfg)
        self._helo = cfg.helo or mail_domain()
        self._bucket = TokenBucket(cfg.rate) if cfg.rate else None
        self._idle: list[Session] = []
        self._lock = threading.Lock()
        self._closed = False
        self._down = Repeats(log, f"relay {cfg.relay} unavailable")
        if cfg.auth is not None and cfg.auth.username and cfg.tls == "none":
            log.warning("smtp.auth is set with tls: none; the password crosses the network in clear")

    def __repr__(self) -> str:
        return f"<Relay {self._cfg.relay} tls={self._cfg.tls} connections={self._cfg.connections}>"

    @property
    def helo(self) -> str:
        """The name sent in EHLO."""
        return self._helo

    def send_grouped(self, envelopes: Iterable[Envelope | None], stop: threading.Event | None = None,
                     linger: float = 0.0, gather: int = 0) -> Generator[list[SendResult], None, None]:
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
        still in flight are then dropped."""
        if isinstance(envelopes, Sequence):
            if not envelopes:
                return
            limit = min(self._cfg.connections, len(envelopes))
        else:
            limit = self._cfg.connections
        batch = _Batch(envelopes, stop, limit, self._work, gather)
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

    def _work(self, batch: _Batch) -> None:
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

    def _run(self, batch: _Batch) -> Session | None:
        session: Session | None = None
        held: dict[str, tuple[Envelope, float, float]] = {}  # handed out, no result yet
        again: deque[Envelope] = deque()  # unanswered on a lost session: once more on a new one
        retried: set[str] = set()

        def take(block: bool) -> Envelope | None:
            env = self._take(batch, block)
            if env is not None:
                held[env.id] = (env, time.time(), time.monotonic())
            return env

        def done(env: Envelope, outcome: Outcome) -> None:
            _, started, t0 = held.pop(env.id)
            batch.put(self._result(env, outcome, started, t0))

        def settle_all(reason: str) -> None:
            for env, _, _ in list(held.values()):
                done(env, everyone(env, None, reason, Kind.TEMPORARY))

        while (env := again.popleft() if again else take(True)) is not None:
            if session is None:
                batch.spawn()  # there was work: another session may find some too
                session = self._checkout()
            try:
                unanswered = session.run(env, Exchange(take, done))
            except SessionError as exc:
                self._down.failed("relay %s unavailable: %s", self._cfg.relay, exc.reason)
                settle_all(exc.reason)
                if batch.leave():
                    self._give_up(batch, exc.reason)
                return session
            except Exception as exc:  # a bug: still one result per message handed out
                log.exception("delivering %s failed unexpectedly", env.id)
                session.close(quit=False)
                again.clear()
                settle_all(f"internal error: {type(exc).__name__}")
                continue
            self._down.cleared()
            for u in unanswered:
                if u.retry and u.env.id not in retried:
                    log.debug("%s not answered (%s); trying it on a new session", u.env.id, u.reason)
                    retried.add(u.env.id)
                    again.append(u.env)
                    held[u.env.id] = (u.env, time.time(), time.monotonic())
                else:
                    done(u.env, everyone(u.env, u.code, u.reason, Kind.TEMPORARY))
        batch.leave()
        return session

    def _take(self, batch: _Batch, block: bool) -> Envelope | None:
        """The next message for a session. Not blocking, it comes only if the rate
        limit has a token ready: a message in flight is never held up for one."""
        if self._bucket is None:
            return batch.take(block)
        if not block:
            if self._bucket.try_take() > 0:
                return None
            env = batch.take(block=False)
            if env is None:
                self._bucket.give_back()
            return env
        env = batch.take()
        if env is not None and not self._bucket.take(batch.stop):
            return None  # stopped while waiting for the rate limit: not attempted
        return env

    def _give_up(self, batch: _Batch, reason: str) -> None:
        """No session of this batch could be opened: answer the rest without waiting
        out a connect timeout for each. A lazy feed is not drained: what it has
        not handed out yet stays where it is, for a later run."""
        batch.given_up = True
        while (env := batch.take()) is not None:
            now = time.time(), time.monotonic()
            outcome = everyone(env, None, f"relay unavailable: {reason}", Kind.TEMPORARY)
            batch.put(self._result(env, outcome, *now))

    def _result(self, env: Envelope, outcome: Outcome, started: float, t0: float) -> SendResult:
        result = SendResult(id=env.id, kind=outcome.kind, code=outcome.code, reply=outcome.reply,
                            recipients=outcome.recipients, started=started, duration=time.monotonic() - t0,
                            relay=self._cfg.relay, lost_in_data=outcome.lost_in_data)
        log.debug("%s: %s %s", env.id, result.kind, result.reply)
        return result

    # -- the pool

    def _checkout(self) -> Session:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # most recently used: least likely stale
        return Session(self._cfg, self._context, self._helo, self._window)

    def _checkin(self, session: Session) -> None:
        with self._lock:
            if not self._closed and session.alive and len(self._idle) < self._cfg.connections:
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
