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
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from . import policy
from .config import ServerConfig
from .smtp import Envelope, Relay, SendResult
from .stores.base import Attempt, Claimed, Outcome, Status, Store

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    expired: int = 0
    released: int = 0  # claimed but handed back unsent (stopping)
    batches: int = 0
    outcomes: dict[str, Status] = field(default_factory=dict)

    def count(self, message_id: str, status: Status) -> None:
        self.outcomes[message_id] = status
        name = status.value
        if hasattr(self, name):
            setattr(self, name, getattr(self, name) + 1)


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Dispatcher:
    def __init__(self, store: Store, cfg: ServerConfig, owner: str | None = None) -> None:
        self.store = store
        self.owner = owner or owner_id()
        self.stop = threading.Event()
        self._cfg = cfg
        self._relay = Relay(cfg.smtp)
        self._lock = threading.Lock()  # one run at a time; configure() waits for it

    @property
    def cfg(self) -> ServerConfig:
        return self._cfg

    def configure(self, cfg: ServerConfig) -> None:
        """Apply a reloaded configuration. A run in flight finishes on the old
        settings: the swap waits for it."""
        with self._lock:
            old, self._cfg = self._relay, cfg
            self._relay = Relay(cfg.smtp)
        old.close()

    def run_once(self, now: float | None = None) -> RunResult:
        """Send everything due at `now` (default: the real clock, read afresh
        for every batch), one batch at a time, until nothing is due."""
        result = RunResult()
        with self._lock:
            cfg, relay = self._cfg, self._relay
            while not self.stop.is_set():
                t = time.time() if now is None else now
                self.store.release(None, now=t)  # leases that ran out (a crashed peer)
                batch = self.store.claim(t, cfg.batch, self.owner, cfg.lease)
                if not batch:
                    break
                result.batches += 1
                self._send_batch(batch, cfg, relay, t if now is not None else None, result)
        return result

    def _send_batch(self, batch: list[Claimed], cfg: ServerConfig, relay: Relay,
                    now: float | None, result: RunResult) -> None:
        live: dict[str, Claimed] = {}
        for msg in batch:
            t = time.time() if now is None else now
            if policy.is_expired(t, msg.send_after, cfg):
                outcome = policy.expired_outcome(cfg)
                self.store.finish(msg.id, self.owner, Attempt(t, cfg.smtp.relay, None, outcome.reason or "",
                                                              0.0, "expired"), outcome)
                result.count(msg.id, Status.EXPIRED)
            else:
                live[msg.id] = msg
        envelopes = [Envelope(m.id, m.mail_from, m.rcpt_to, m.raw) for m in live.values()]
        for sent in relay.send(envelopes, self.stop):
            msg = live.pop(sent.id)
            self._commit(msg, sent, cfg, now, result)
        if live:  # stopping: hand back what was never tried
            result.released += self.store.release(self.owner, list(live))

    def _commit(self, msg: Claimed, sent: SendResult, cfg: ServerConfig, now: float | None,
                result: RunResult) -> None:
        t = time.time() if now is None else now
        outcome, recipients = policy.decide(sent, msg, cfg, t)
        attempt = Attempt(sent.started if now is None else now, sent.relay, sent.code, sent.reply,
                          sent.duration, sent.kind)
        self.store.finish(msg.id, self.owner, attempt, outcome, recipients)
        result.count(msg.id, outcome.status)
        _log_outcome(msg, outcome)

    def close(self) -> None:
        self._relay.close()


def _log_outcome(msg: Claimed, outcome: Outcome) -> None:
    if outcome.status is Status.SENT:
        log.info("sent %s to %d recipient(s)", msg.id, len(msg.rcpt_to))
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
            executors={"default": ThreadPoolExecutor(1)},
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
            if not self._again.is_set() or self.dispatcher.stop.is_set():
                break
        due = self.dispatcher.store.next_due()
        if due is not None and not self.dispatcher.stop.is_set():
            self._run_at(datetime.fromtimestamp(max(due, time.time()), UTC))

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
