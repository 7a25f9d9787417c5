"""The APScheduler jobs: dispatch every `interval` and when poked, the
heartbeat with lease renewal, and housekeeping. What a dispatch run does is
dispatcher.py's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from .dispatcher import HEARTBEAT, Dispatcher, RunResult
from .errors import StoreUnavailable
from .repeats import Repeats

log = logging.getLogger(__name__)


class DispatchScheduler:
    """The APScheduler side: the dispatch job every `interval`, at once when
    poked (ingest stored something due, or another daemon said so), and at the
    next due time when that comes before the next tick, so the queue never
    waits on the clock. Also the heartbeat (with lease renewal) and housekeeping."""

    JOB = "dispatch"

    def __init__(self, dispatcher: Dispatcher, retention: float,
                 heartbeat: Callable[[float], None] | None = None) -> None:
        self.dispatcher = dispatcher
        self.retention = retention
        self.last: RunResult | None = None
        self._heartbeat = heartbeat
        self._again = threading.Event()
        self._store_down = Repeats(log, "dispatch: store")
        self._sched = BackgroundScheduler(
            # Three threads: a long dispatch run must hold up neither housekeeping nor the heartbeat.
            executors={"default": ThreadPoolExecutor(3)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def start(self) -> None:
        interval = self.dispatcher.cfg.interval
        now = datetime.now(UTC)
        self._sched.add_job(self._dispatch, "interval", seconds=interval, id=self.JOB, next_run_time=now)
        self._sched.add_job(self._housekeeping, "interval", minutes=5, id="housekeeping", next_run_time=now)
        self._sched.add_job(self._beat, "interval", seconds=min(HEARTBEAT, self.dispatcher.cfg.lease / 3),
                            id="heartbeat", next_run_time=now)
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
                self._store_down.cleared()
            except StoreUnavailable as exc:  # claims wait for the store; the next tick tries again
                self._store_down.failed("dispatch paused: %s", exc)
                return
            except Exception:  # the job must survive a bad moment (a relay bug)
                log.exception("dispatch run failed")
            if not self._again.is_set() or self.dispatcher.stop.is_set() or self._gave_up():
                break
        if self._gave_up():
            return  # the relay could not be reached: the next tick tries again, no sooner
        try:
            due = self.dispatcher.store.next_due()
        except StoreUnavailable:
            return
        if due is not None and not self.dispatcher.stop.is_set():
            self._run_at(datetime.fromtimestamp(max(due, time.time()), UTC))

    def _gave_up(self) -> bool:
        return self.last is not None and self.last.unreachable

    def _beat(self) -> None:
        now = time.time()
        try:
            if self._heartbeat is not None:
                self._heartbeat(now)
            self.dispatcher.renew(now)
        except StoreUnavailable:
            pass  # the dispatch job reports the outage; leases run out as they must
        except Exception:
            log.exception("heartbeat failed")

    def _housekeeping(self) -> None:
        now = time.time()
        store = self.dispatcher.store
        try:
            store.record_depth(now)
            store.housekeeping(now)
            purged = store.purge(now - self.retention)
            if purged:
                log.info("purged %d finished message(s) older than retention", purged)
        except StoreUnavailable as exc:
            log.warning("housekeeping skipped: %s", exc)
        except Exception:
            log.exception("housekeeping failed")

    def reschedule(self, interval: float, retention: float) -> None:
        self.retention = retention
        self._sched.reschedule_job(self.JOB, trigger="interval", seconds=interval)
        self.poke()

    def shutdown(self) -> None:
        self.dispatcher.stop.set()
        self._sched.shutdown(wait=True)


__all__ = ["DispatchScheduler"]
