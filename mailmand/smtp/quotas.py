"""Relay quotas (`quota: {per-day: N}`), counted in the store so that they hold
across restarts and between daemons sharing it.

A message counts when it is handed to the relay. The count is taken from the
store a chunk at a time (one write per QUOTA_CHUNK messages, not one per
message) and what a run did not use is given back when it ends: a daemon killed
meanwhile loses at most a chunk of the day's quota, and never sends past it.
Days are UTC days.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from mailmand.repeats import Repeats

log = logging.getLogger(__name__)

QUOTA_CHUNK = 20  # messages counted in the store at a time
DAY = 86400.0


class QuotaStore(Protocol):
    """The part of the store contract (stores/base.py) quotas use."""

    def quota_reserve(self, relay: str, day: int, want: int, limit: int) -> int: ...

    def quota_release(self, relay: str, day: int, n: int) -> None: ...


class Quotas:
    """Each relay's share of its quota held by this daemon now. Thread-safe."""

    def __init__(self, store: QuotaStore | None, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._held: dict[str, tuple[int, int]] = {}  # relay -> (day, counted in the store and not yet used)
        self._spent: dict[str, int] = {}  # relay -> the day its quota was found spent
        self._said: dict[str, int] = {}  # relay -> the day that was logged (once a day)
        self._lock = threading.Lock()
        self._trouble = Repeats(log, "relay quotas: store")

    def take(self, relay: str, limit: int) -> bool:
        """Count one message against `relay`'s quota; False when the day's is spent
        (or cannot be read: a quota that cannot be checked is not passed)."""
        day = int(self._clock() // DAY)
        with self._lock:
            held_day, n = self._held.get(relay, (day, 0))
            if held_day != day:
                self._give(relay, held_day, n)
                n = 0
            if n > 0:
                self._held[relay] = (day, n - 1)
                return True
            if self._spent.get(relay) == day or self._store is None:
                return False
            try:
                got = self._store.quota_reserve(relay, day, min(QUOTA_CHUNK, limit), limit)
            except Exception as exc:  # the store's own trouble is reported by dispatch; this says why mail waits
                self._trouble.failed("cannot count relay %s's quota: %s", relay, exc)
                return False
            self._trouble.cleared()
            if got == 0:
                self._spent[relay] = day
                if self._said.get(relay) != day:
                    self._said[relay] = day
                    log.warning("relay %s: its quota for today (%d) is spent", relay, limit)
                return False
            self._held[relay] = (day, got - 1)
            return True

    def give_back(self, relay: str) -> None:
        """One counted message the relay never took (it was down, or pushed back)."""
        day = int(self._clock() // DAY)
        with self._lock:
            held_day, n = self._held.get(relay, (day, 0))
            if held_day == day:
                self._held[relay] = (day, n + 1)

    def spent(self, relay: str) -> bool:
        return self._spent.get(relay) == int(self._clock() // DAY)

    def release(self) -> None:
        """Give back to the store what this daemon counted and did not use (a run is over)."""
        with self._lock:
            held, self._held = self._held, {}
            self._spent.clear()  # the next run asks the store again once (another daemon may have given some back)
            for relay, (day, n) in held.items():
                self._give(relay, day, n)

    def _give(self, relay: str, day: int, n: int) -> None:
        if n <= 0 or self._store is None:
            return
        try:
            self._store.quota_release(relay, day, n)
        except Exception as exc:  # counted and unused: the quota is short by that much today, never over
            self._trouble.failed("cannot give back %d of relay %s's quota: %s", n, relay, exc)
