"""Dispatch: claim what is due, send it, commit each outcome as it comes back.

`Dispatcher.run_once(now=None)` is the one function behind the APScheduler
job, `mailmand --once` and the tests (which inject `now`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from . import observe, policy
from .config import ServerConfig
from .smtp import Envelope, Relay, SendResult
from .stores.base import Attempt, Claimed, Finished, Outcome, Status, Store

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    expired: int = 0
    released: int = 0  # claimed but handed back unsent (stopping)
    batches: int = 0

    def count(self, status: Status) -> None:
        if status is not Status.CANCELLED and status.value in self.__dataclass_fields__:
            setattr(self, status.value, getattr(self, status.value) + 1)


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Dispatcher:
    def __init__(self, store: Store, cfg: ServerConfig, owner: str | None = None) -> None:
        self.store = store
        self.owner = owner or owner_id()
        self.stop = threading.Event()
        self._cfg = cfg
        self._relay = Relay(cfg.smtp)
        self._pending: tuple[ServerConfig, Relay] | None = None  # a reload, applied between batches
        self._run_lock = threading.Lock()  # one run at a time
        self._cfg_lock = threading.Lock()

    @property
    def cfg(self) -> ServerConfig:
        pending = self._pending
        return pending[0] if pending else self._cfg

    def configure(self, cfg: ServerConfig) -> None:
        """Apply a reloaded configuration: now if idle, else before the next
        batch. A batch in flight finishes on the old settings. Raises (and
        changes nothing) if the relay settings cannot be used, e.g. a bad CA file."""
        relay = Relay(cfg.smtp)
        with self._cfg_lock:
            self._pending = (cfg, relay)
        if self._run_lock.acquire(blocking=False):
            try:
                self._apply_pending()
            finally:
                self._run_lock.release()

    def _apply_pending(self) -> None:
        with self._cfg_lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            old = self._relay
            self._cfg, self._relay = pending
            old.close()

    def run_once(self, now: float | None = None) -> RunResult:
        """Send everything due at `now` (default: the real clock, read afresh
        for every batch), a batch at a time, until nothing is due."""
        result = RunResult()
        with self._run_lock:
            while True:
                self._apply_pending()
                self._run(self._cfg, self._relay, now, result)
                # The feed stops early for a reloaded configuration: go on under it.
                if self._pending is None or self.stop.is_set():
                    break
        if result.batches:
            log.info("dispatched %d batch(es): sent %d, deferred %d, failed %d, expired %d, released %d",
                     result.batches, result.sent, result.deferred, result.failed, result.expired,
                     result.released)
        return result

    def _run(self, cfg: ServerConfig, relay: Relay, now: float | None, result: RunResult) -> None:
        live: dict[str, Claimed] = {}  # claimed and not yet committed
        feed = self._feed(cfg, now, result, live)
        try:
            # The sessions pull from the feed, which claims the next batch only
            # when one of them is free for it: no session idles at a batch
            # boundary, and nothing is claimed that no session can take.
            for group in relay.send_grouped(feed, self.stop):
                self._commit([(live.pop(sent.id), sent) for sent in group], cfg, now, result)
        finally:
            feed.close()
            if live:  # stopping, or a failure: hand back what was never tried, at once
                result.released += self.store.release(self.owner, list(live))

    def _feed(self, cfg: ServerConfig, now: float | None, result: RunResult,
              live: dict[str, Claimed]) -> Generator[Envelope, None, None]:
        """Claim up to `batch` due messages at a time, expire those past
        max-time, and hand out the rest. Runs in the sessions' threads, one at a time."""
        while not self.stop.is_set() and self._pending is None:
            t = time.time() if now is None else now
            observe.observer.dispatching()
            # Leases that ran out (a crashed peer); ours are alive, however long they take.
            self.store.release(None, now=t, spare=self.owner)
            batch = self.store.claim(t, cfg.batch, self.owner, cfg.lease)
            if not batch:
                return
            result.batches += 1
            expired: list[Finished] = []
            for msg in batch:
                if policy.is_expired(t, msg.send_after, cfg):
                    outcome = policy.expired_outcome(cfg)
                    attempt = Attempt(t, cfg.smtp.relay, None, outcome.reason or "", 0.0, "expired")
                    expired.append((msg.id, self.owner, attempt, outcome, ()))
                else:
                    live[msg.id] = msg
            if expired:
                self.store.finish_many(expired)
                result.expired += len(expired)
                for _ in expired:
                    observe.observer.outcome(Status.EXPIRED, None, t)
            for msg in batch:
                if msg.id in live:
                    yield Envelope(msg.id, msg.mail_from, msg.rcpt_to, msg.raw)

    def _commit(self, done: list[tuple[Claimed, SendResult]], cfg: ServerConfig, now: float | None,
                result: RunResult) -> None:
        rows: list[Finished] = []
        for msg, sent in done:
            t = time.time() if now is None else now
            outcome, recipients = policy.decide(sent, msg, cfg, t)
            # `at` is when the relay answered, so latency runs to its 250.
            attempt = Attempt(sent.started + sent.duration if now is None else now, sent.relay, sent.code,
                              sent.reply, sent.duration, sent.kind)
            rows.append((msg.id, self.owner, attempt, outcome, recipients))
        self.store.finish_many(rows)
        for (msg, sent), (_, _, _, outcome, _) in zip(done, rows, strict=True):
            result.count(outcome.status)
            observe.observer.outcome(outcome.status, sent, msg.send_after)
            _log_outcome(msg, outcome)

    def close(self) -> None:
        self._relay.close()


def _log_outcome(msg: Claimed, outcome: Outcome) -> None:
    # A delivery is DEBUG (the store records every attempt, and `run_once`
    # logs a summary); what needs a look, a deferral or a failure, is WARNING.
    if outcome.status is Status.SENT:
        log.debug("sent %s to %d recipient(s)", msg.id, len(msg.rcpt_to))
    elif outcome.status is Status.DEFERRED and not outcome.counted:
        # The relay was not reached: the relay pool logs that once per outage (logs.Repeats).
        log.debug("deferred %s until %s: %s", msg.id,
                  datetime.fromtimestamp(outcome.due_at or 0).isoformat(timespec="seconds"), outcome.reason)
    elif outcome.status is Status.DEFERRED:
        log.warning("deferred %s until %s: %s", msg.id,
                    datetime.fromtimestamp(outcome.due_at or 0).isoformat(timespec="seconds"),
                    outcome.reason)
    else:
        log.warning("%s %s: %s", outcome.status.value, msg.id, outcome.reason)


class DispatchScheduler:
    """The APScheduler side: the dispatch job every `interval`, at once when
    poked (ingest stored something due), and at the next due time when that
    comes before the next tick, so the queue never waits on the clock."""

    JOB = "dispatch"

    def __init__(self, dispatcher: Dispatcher, retention: float) -> None:
        self.dispatcher = dispatcher
        self.retention = retention
        self.last: RunResult | None = None
        self._again = threading.Event()
        self._sched = BackgroundScheduler(
            # Two threads: a long dispatch run must not hold up housekeeping.
            executors={"default": ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def start(self) -> None:
        interval = self.dispatcher.cfg.interval
        self._sched.add_job(self._dispatch, "interval", seconds=interval, id=self.JOB,
                            next_run_time=datetime.now(UTC))
        self._sched.add_job(self._housekeeping, "interval", minutes=5, id="housekeeping",
                            next_run_time=datetime.now(UTC))
        self._sched.start()

    def poke(self) -> None:
        """Run the dispatch job now (or again right after the one running)."""
        self._again.set()
        self._run_at(datetime.now(UTC))

    def wake_at(self, when: float) -> None:
        """Something new is due at `when` (epoch seconds): make sure the job runs then."""
        if when <= time.time():
            self.poke()
        else:
            self._run_at(datetime.fromtimestamp(when, UTC))

    def _run_at(self, when: datetime) -> None:
        job = self._sched.get_job(self.JOB)
        if job is not None and (job.next_run_time is None or when < job.next_run_time):
            job.modify(next_run_time=when)

    def _dispatch(self) -> None:
        while True:
            self._again.clear()
            try:
                self.last = self.dispatcher.run_once()
            except Exception:  # the job must survive a bad moment (store locked, relay bug)
                log.exception("dispatch run failed")
            if not self._again.is_set() or self.dispatcher.stop.is_set() or self._gave_up():
                break
        if self._gave_up():
            return  # the relay could not be reached: the next tick tries again, no sooner
        due = self.dispatcher.store.next_due()
        if due is not None and not self.dispatcher.stop.is_set():
            self._run_at(datetime.fromtimestamp(max(due, time.time()), UTC))

    def _gave_up(self) -> bool:
        return self.last is not None and self.last.released > 0

    def _housekeeping(self) -> None:
        now = time.time()
        try:
            self.dispatcher.store.record_depth(now)
            purged = self.dispatcher.store.purge(now - self.retention)
            if purged:
                log.info("purged %d finished message(s) older than retention", purged)
        except Exception:
            log.exception("housekeeping failed")

    def reschedule(self, interval: float, retention: float) -> None:
        self.retention = retention
        self._sched.reschedule_job(self.JOB, trigger="interval", seconds=interval)
        self.poke()

    def shutdown(self) -> None:
        self.dispatcher.stop.set()
        self._sched.shutdown(wait=True)


__all__ = ["Dispatcher", "DispatchScheduler", "RunResult"]
