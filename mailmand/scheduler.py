"""When dispatch runs: every `interval` and when poked, in a thread of its
own; and the APScheduler jobs, the heartbeat with lease renewal and
housekeeping. What a dispatch run does is dispatcher.py's.
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
    """Dispatch runs in a thread of its own: every `interval`, at once when
    poked (ingest stored something due, or another daemon said so), and at
    the next due time when that comes before the next tick, so the queue never
    waits on the clock. APScheduler runs the heartbeat (with lease renewal)
    and housekeeping.

    Not an APScheduler job: a poke comes with every message that trickles
    in, and moving a job's next run time woke the scheduler's thread, which
    handed the run to an executor's thread: two hand-offs and about 0.1 ms of
    CPU a message before anything was claimed (measured at 200 msg/s; see
    docs/performance.md). A poke is now one condition notified."""

    def __init__(self, dispatcher: Dispatcher, retention: float,
                 heartbeat: Callable[[float], None] | None = None) -> None:
        self.dispatcher = dispatcher
        self.retention = retention
        self.interval = dispatcher.cfg.interval
        self.last: RunResult | None = None
        self._heartbeat = heartbeat
        self._changed = threading.Condition()
        self._poked = False  # run now, or again right after the run under way
        self._next_at = 0.0  # epoch seconds of the next run (the tick, or sooner if mail is due): at once
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mailmand-dispatch", daemon=True)
        self._store_down = Repeats(log, "dispatch: store")
        self._sched = BackgroundScheduler(
            # Two threads: a long housekeeping run must not hold up the heartbeat.
            executors={"default": ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def start(self) -> None:
        now = datetime.now(UTC)
        self._sched.add_job(self._housekeeping, "interval", minutes=5, id="housekeeping", next_run_time=now)
        self._sched.add_job(self._beat, "interval", seconds=min(HEARTBEAT, self.dispatcher.cfg.lease / 3),
                            id="heartbeat", next_run_time=now)
        self._sched.start()
        self._thread.start()

    def poke(self) -> None:
        """Run dispatch now (or again right after the run under way)."""
        with self._changed:
            self._poked = True
            self._changed.notify()

    def wake_at(self, when: float) -> None:
        """Something new is due at `when` (epoch seconds): make sure dispatch runs then."""
        with self._changed:
            if when < self._next_at:
                self._next_at = when
                self._changed.notify()

    def _loop(self) -> None:
        while True:
            with self._changed:
                while not (self._poked or self._stopping) and (left := self._next_at - time.time()) > 0:
                    self._changed.wait(left)
                if self._stopping:
                    return
                self._poked = False
                self._next_at = time.time() + self.interval
            self._dispatch()

    def _dispatch(self) -> None:
        try:
            self.last = self.dispatcher.run_once()
            self._store_down.cleared()
        except StoreUnavailable as exc:  # claims wait for the store; the next tick tries again
            self._store_down.failed("dispatch paused: %s", exc)
            return
        except Exception:  # the thread must survive a bad moment (a relay bug)
            log.exception("dispatch run failed")
        if self._gave_up():
            with self._changed:
                self._poked = False  # the relay could not be reached: the next tick tries again, no sooner
            return
        try:
            due = self.dispatcher.store.next_due()
        except StoreUnavailable:
            return
        if due is not None:
            self.wake_at(due)

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
        self.interval = interval
        self.poke()

    def shutdown(self) -> None:
        self.dispatcher.stop.set()
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join()
        self._sched.shutdown(wait=True)


__all__ = ["DispatchScheduler"]
