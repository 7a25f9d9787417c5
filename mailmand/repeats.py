"""Log floods: an error that repeats is logged in full once, then summarised.

A relay that is down, a full disk or a lost database can fail thousands of
times a minute. `Repeats` logs the first failure of a condition in full, then
at most one summary line per `every` seconds with the count, and one line when
the condition clears.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class Repeats:
    """One per condition (e.g. "spool full", "relay down"), shared by the code that hits it.

        spool_full = Repeats(log, "spool disk full")
        try: ...
        except OSError as exc:
            spool_full.failed("cannot take from the spool: %s", exc)
        else:
            spool_full.cleared()
    """

    def __init__(self, logger: logging.Logger, what: str, every: float = 60.0,
                 level: int = logging.WARNING, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.what = what
        self.every = every
        self.level = level
        self.clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the condition began
        self._count = 0  # failures since the last line logged
        self._total = 0
        self._last = 0.0
        self.last: str | None = None  # the last failure, as logged (for /healthz); None once cleared

    @property
    def active(self) -> bool:
        return self._since is not None

    def failed(self, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Record one failure; logs it in full if it is the first, a summary if
        `every` has passed. Returns True when a line was logged."""
        with self._lock:
            now = self.clock()
            self._total += 1
            self.last = msg % args if args else msg
            if self._since is None:
                self._since = self._last = now
                self._count = 0
                self.log.log(self.level, msg, *args, exc_info=exc_info)
                return True
            self._count += 1
            if now - self._last < self.every:
                return False
            count, self._count, self._last = self._count, 0, now
        self.log.log(self.level, "%s: %d more time(s) in the last %.0fs (last: " + msg + ")",
                     self.what, count, self.every, *args)
        return True

    def cleared(self) -> bool:
        """The condition is over: logs once how long it lasted. Returns True when it was active."""
        with self._lock:
            if self._since is None:
                return False
            lasted, total = self.clock() - self._since, self._total
            self._since, self._count, self._total, self.last = None, 0, 0, None
        self.log.info("%s: cleared after %.0fs (%d failure(s))", self.what, lasted, total)
        return True
